"""`cohort lab ...`: build, inspect and tear down the local lab network from a shell.

A thin typer front-end over :class:`cohort.lab.Lab`, mounted as ``cohort lab``. Every command
reads the same settings as the rest of ``cohort`` (``--config``, ``COHORT_*`` variables) and
finds the lab where ``cohort up`` keeps it (``Layout.lab_dir``); ``--state-dir`` and
``--prefix`` override the settings, so the commands work on a test lab too. Errors are one
line on stderr and exit status 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cohort import netns
from cohort.config import load_settings
from cohort.lab.core import Lab
from cohort.lab.errors import LabError
from cohort.lab.router import DEFAULT_ASN, RouterSettings
from cohort.layout import Layout

app = typer.Typer(help="The local lab network (namespaces, bridges, gateway, client, members).")
member_app = typer.Typer(help="HTTP and SCTP member servers on the back-end network.")
app.add_typer(member_app, name="member")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML configuration file.")]
StateDir = Annotated[Path | None, typer.Option("--state-dir", help="State directory (default: the settings').")]
Prefix = Annotated[str | None, typer.Option("--prefix", help="Lab prefix (default: the settings' lab_prefix).")]

console = Console()
errors = Console(stderr=True)


def _fail(exc: Exception, code: int = 1) -> typer.Exit:
    errors.print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(code)


def _lab(config: Path | None, state_dir: Path | None, prefix: str | None, mgmt_cidr: str | None = None) -> Lab:
    try:
        settings = load_settings(config, state_dir=state_dir, lab_prefix=prefix)
        return Lab(Layout.of(settings).lab_dir, settings.lab_prefix, mgmt_cidr)
    except (LabError, ValueError, OSError) as exc:
        raise _fail(exc) from exc


@app.command()
def up(
    config: ConfigOpt = None,
    state_dir: StateDir = None,
    prefix: Prefix = None,
    mgmt_cidr: Annotated[str | None, typer.Option(help="Management /24 inside 198.18.0.0/15.")] = None,
    router_asn: Annotated[int, typer.Option(help="The gateway router's AS.")] = DEFAULT_ASN,
    router_password: Annotated[str | None, typer.Option(help="MD5 password the router asks of BGP peers.")] = None,
    resilient: Annotated[bool, typer.Option(help="Resilient next-hop groups instead of plain ECMP.")] = False,
) -> None:
    """Build the lab (or finish a half-built one), with FRR as its gateway router."""
    lab = _lab(config, state_dir, prefix, mgmt_cidr)
    try:
        lab.up()
        lab.router.configure(RouterSettings(asn=router_asn, password=router_password, resilient=resilient))
    except LabError as exc:
        raise _fail(exc) from exc
    console.print(f"lab [bold]{lab.prefix}[/bold] is up; controller address {lab.mgmt_host_ip}")


@app.command()
def down(config: ConfigOpt = None, state_dir: StateDir = None, prefix: Prefix = None) -> None:
    """Remove every namespace, link, process and cgroup the lab made."""
    lab = _lab(config, state_dir, prefix)
    lab.down()
    console.print(f"lab [bold]{lab.prefix}[/bold] is down")


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    return table


@app.command()
def status(
    config: ConfigOpt = None,
    state_dir: StateDir = None,
    prefix: Prefix = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Networks, subnets, members and namespaces of the lab."""
    st = _lab(config, state_dir, prefix).status()
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
    router = st["router"]
    console.print(
        f"router: AS {router['asn']} at {router['address']} "
        f"({'running' if router['running'] else 'stopped'}; {'resilient' if router['resilient'] else 'plain'} "
        f"ECMP; MD5 {'on' if router['md5'] else 'off'})"
    )
    console.print(_table("BGP neighbours", ["peer", "state"], sorted(router["neighbors"].items())))
    console.print(_table("VIP routes", ["VIP", "next hops"],
                         [[vip, ", ".join(hops)] for vip, hops in sorted(router["routes"].items())]))


@app.command("exec", context_settings={"allow_interspersed_args": False})
def exec_(
    ns: Annotated[str, typer.Argument(help="client | gw | sw | a member name | a namespace of the lab")],
    cmd: Annotated[list[str], typer.Argument(help="The command (put it after --).")],
    config: ConfigOpt = None,
    state_dir: StateDir = None,
    prefix: Prefix = None,
) -> None:
    """Run a command inside one of the lab's namespaces, e.g. `exec client -- curl -s 203.0.113.100`."""
    lab = _lab(config, state_dir, prefix)
    try:
        target = lab.resolve_ns(ns)
    except LabError as exc:
        raise _fail(exc, 2) from exc
    if cmd and cmd[0] == "--":  # click keeps it when options stop at the first argument
        cmd = cmd[1:]
    raise typer.Exit(netns.run_attached(target, cmd))


@member_app.command("add")
def member_add(
    name: str,
    port: Annotated[int, typer.Option(help="TCP (or SCTP) port the member listens on.")] = 80,
    workers: Annotated[int, typer.Option(help="Server processes sharing the port.")] = 1,
    protocol: Annotated[str, typer.Option(help="HTTP, or SCTP: an echo member answering 'NAME: message'.")] = "HTTP",
    config: ConfigOpt = None,
    state_dir: StateDir = None,
    prefix: Prefix = None,
) -> None:
    """Start an HTTP (or SCTP) member on the back-end network; prints its address."""
    lab = _lab(config, state_dir, prefix)
    try:
        typer.echo(lab.add_member(name, port, workers, exclusive=True, protocol=protocol.upper()))
    except LabError as exc:
        raise _fail(exc) from exc


@member_app.command("rm")
def member_rm(name: str, config: ConfigOpt = None, state_dir: StateDir = None, prefix: Prefix = None) -> None:
    """Stop a member and remove its namespace."""
    _lab(config, state_dir, prefix).remove_member(name)


@app.command("sctp")
def sctp(
    address: Annotated[str, typer.Argument(help="The VIP (or a member) to reach.")],
    port: Annotated[int, typer.Argument(help="Its SCTP port.")],
    count: Annotated[int, typer.Option(help="Associations to open, one message each.")] = 1,
    message: Annotated[str, typer.Option(help="What to send.")] = "ping",
    config: ConfigOpt = None,
    state_dir: StateDir = None,
    prefix: Prefix = None,
) -> None:
    """From the client namespace: open SCTP associations, send a message on each, print the answers (JSON)."""
    lab = _lab(config, state_dir, prefix)
    try:
        result = lab.sctp_client(address, port, ["--count", str(count), "--message", message])
    except LabError as exc:
        raise _fail(exc) from exc
    typer.echo(result.stdout.rstrip())
    if result.returncode:
        errors.print(result.stderr.rstrip(), highlight=False)
        raise typer.Exit(result.returncode)
