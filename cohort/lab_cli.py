"""`cohort lab ...`: build, inspect and tear down the local lab network from a shell.

A thin typer front-end over :class:`cohort.lab.Lab`; the lead mounts ``app`` as ``cohort lab``.
Every command takes ``--state-dir`` (env COHORT_STATE_DIR, default /var/lib/cohort) and
``--prefix`` (env COHORT_LAB_PREFIX, default ``cohort``), so it works on a test lab too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cohort import netns
from cohort.lab import DEFAULT_PREFIX, Lab, LabError

app = typer.Typer(help="The local lab network (namespaces, bridges, gateway, client, members).")
member_app = typer.Typer(help="HTTP member servers on the back-end network.")
app.add_typer(member_app, name="member")

StateDir = Annotated[
    Path, typer.Option("--state-dir", envvar="COHORT_STATE_DIR", help="Where the lab keeps its state.")
]
Prefix = Annotated[str, typer.Option("--prefix", envvar="COHORT_LAB_PREFIX", help="Namespace name prefix.")]
DEFAULT_STATE_DIR = Path("/var/lib/cohort")

console = Console()


def _lab(state_dir: Path, prefix: str, mgmt_cidr: str | None = None) -> Lab:
    try:
        return Lab(state_dir, prefix, mgmt_cidr)
    except (LabError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


@app.command()
def up(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    prefix: Prefix = DEFAULT_PREFIX,
    mgmt_cidr: Annotated[str | None, typer.Option(help="Management /24 inside 198.18.0.0/15.")] = None,
) -> None:
    """Build the lab (or finish a half-built one)."""
    lab = _lab(state_dir, prefix, mgmt_cidr)
    try:
        lab.up()
    except LabError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"lab [bold]{prefix}[/bold] is up; controller address {lab.mgmt_host_ip}")


@app.command()
def down(state_dir: StateDir = DEFAULT_STATE_DIR, prefix: Prefix = DEFAULT_PREFIX) -> None:
    """Remove every namespace, link, process and cgroup the lab made."""
    _lab(state_dir, prefix).down()
    console.print(f"lab [bold]{prefix}[/bold] is down")


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    return table


@app.command()
def status(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    prefix: Prefix = DEFAULT_PREFIX,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Networks, subnets, members and namespaces of the lab."""
    st = _lab(state_dir, prefix).status()
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    mgmt = st["management"]
    console.print(
        f"lab [bold]{st['prefix']}[/bold]: {'[green]up[/green]' if st['up'] else '[red]down[/red]'}; "
        f"management {mgmt['cidr']} via {mgmt['host_interface']} ({mgmt['host_ip']})"
    )
    nets = [[n["name"], n["id"], n["cidr"], n["bridge"]] for n in st["networks"]]
    console.print(_table("networks", ["name", "id", "cidr", "bridge"], nets))
    console.print(
        _table(
            "subnets",
            ["name", "id", "cidr", "gateway"],
            [[s["name"], s["id"], s["cidr"], s["gateway_ip"]] for s in st["subnets"]],
        )
    )
    console.print(
        _table(
            "members",
            ["name", "address", "port", "alive", "namespace"],
            [[m["name"], m["address"], m["port"], m["alive"], m["namespace"]] for m in st["members"]],
        )
    )
    console.print(_table("namespaces", ["namespace"], [[ns] for ns in st["namespaces"]]))


@app.command("exec", context_settings={"allow_interspersed_args": False})
def exec_(
    ns: Annotated[str, typer.Argument(help="client | gw | sw | a member name | a namespace of the lab")],
    cmd: Annotated[list[str], typer.Argument(help="The command (put it after --).")],
    state_dir: StateDir = DEFAULT_STATE_DIR,
    prefix: Prefix = DEFAULT_PREFIX,
) -> None:
    """Run a command inside one of the lab's namespaces, e.g. `exec client -- curl -s 203.0.113.100`."""
    lab = _lab(state_dir, prefix)
    try:
        target = lab.resolve_ns(ns)
    except LabError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    if cmd and cmd[0] == "--":  # click keeps it when options stop at the first argument
        cmd = cmd[1:]
    raise typer.Exit(netns.run_attached(target, cmd))


@member_app.command("add")
def member_add(
    name: str,
    port: Annotated[int, typer.Option(help="TCP port the member listens on.")] = 80,
    workers: Annotated[int, typer.Option(help="Server processes sharing the port.")] = 1,
    state_dir: StateDir = DEFAULT_STATE_DIR,
    prefix: Prefix = DEFAULT_PREFIX,
) -> None:
    """Start an HTTP member on the back-end network; prints its address."""
    try:
        typer.echo(_lab(state_dir, prefix).add_member(name, port, workers))
    except LabError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


@member_app.command("rm")
def member_rm(name: str, state_dir: StateDir = DEFAULT_STATE_DIR, prefix: Prefix = DEFAULT_PREFIX) -> None:
    """Stop a member and remove its namespace."""
    _lab(state_dir, prefix).remove_member(name)
