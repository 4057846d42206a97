"""`cohort up --demo` and `cohort down`: a demo load balancer serving real traffic, and the clean-up.

The demo talks to Cohort only through its public API, as a tenant would, then sends a few
requests from the lab's client namespace to prove that traffic flows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from cohort.config import Settings
from cohort.harness import HarnessError, lab_for, wait_for_api
from cohort.harness import teardown as harness_teardown
from cohort.layout import Layout
from cohort.statedir import make_private

DEMO_MEMBERS = ("demo1", "demo2")
DEMO_FLAVOR = {"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 3,
               "distributor_affinity": "SOURCE_IP_PORT"}


def pid_file(settings: Settings) -> Path:
    return Layout.of(settings).pid_file


def log_file(settings: Settings) -> Path:
    return Layout.of(settings).log_file


def start_detached(settings: Settings, argv: list[str], console: Console) -> int:
    """Run ``cohort up`` (without --detach) in the background; return its pid once the API answers."""
    make_private(settings.state_dir)
    existing = _running_pid(settings)
    if existing:
        console.print(f"Cohort is already running (pid {existing}); `cohort down` stops it.")
        return existing
    log = log_file(settings).open("ab")
    process = subprocess.Popen([sys.executable, "-m", "cohort.cli", *argv], stdout=log, stderr=log,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    pid_file(settings).write_text(str(process.pid))
    base = f"http://{settings.api_host}:{settings.api_port}"
    with console.status(f"Starting Cohort (pid {process.pid}, log {log_file(settings)})..."):
        try:
            wait_for_api(base, alive=lambda: process.poll() is None)
        except HarnessError:
            console.print(f"[red]Cohort did not start; see {log_file(settings)}[/red]")
            raise
    console.print(f"[green]Cohort is running[/green] (pid {process.pid}) at {base}")
    return process.pid


def _running_pid(settings: Settings) -> int | None:
    path = pid_file(settings)
    if not path.exists():
        return None
    pid = int(path.read_text().strip() or 0)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError):
        path.unlink(missing_ok=True)
        return None
    return pid


def run_demo(settings: Settings, console: Console, topology_flavor: dict[str, Any] | None = DEMO_FLAVOR) -> None:
    base = f"http://{settings.api_host}:{settings.api_port}"
    wait_for_api(base)
    lab = lab_for(settings)
    client = httpx.Client(base_url=base + "/v2", timeout=30)
    addresses = []
    with console.status("Starting demo member servers on the back-end network..."):
        for name in DEMO_MEMBERS:
            addresses.append(lab.add_member(name))
    console.print(f"Members: {', '.join(f'{n} at {a}:80' for n, a in zip(DEMO_MEMBERS, addresses, strict=True))}")
    body: dict[str, Any] = {"name": "demo", "vip_subnet_id": "public-subnet", "listeners": [{
        "name": "demo-http", "protocol": "HTTP", "protocol_port": 80, "default_pool": {
            "name": "demo-pool", "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
            "healthmonitor": {"type": "HTTP", "delay": 2, "timeout": 1, "max_retries": 2, "url_path": "/healthz"},
            "members": [{"address": a, "protocol_port": 80, "subnet_id": "private-subnet", "name": n}
                        for n, a in zip(DEMO_MEMBERS, addresses, strict=True)]}}]}
    if topology_flavor is not None:
        body["flavor_id"] = _demo_flavor(client, topology_flavor)
    started = time.monotonic()
    response = client.post("/lbaas/loadbalancers", json={"loadbalancer": body})
    if response.status_code != 201:
        raise RuntimeError(f"creating the demo load balancer failed: {response.text}")
    lb = response.json()["loadbalancer"]
    topology = (topology_flavor or {}).get("loadbalancer_topology", settings.default_topology)
    with console.status(f"Building a {topology} load balancer: amphorae, HAProxy, distributor...") as status:
        while True:
            lb = client.get(f"/lbaas/loadbalancers/{lb['id']}").json()["loadbalancer"]
            status.update(f"Load balancer {lb['id'][:8]}: {lb['provisioning_status']} "
                          f"({time.monotonic() - started:.1f}s)")
            if lb["provisioning_status"] in ("ACTIVE", "ERROR"):
                break
            time.sleep(0.2)
    if lb["provisioning_status"] == "ERROR":
        raise RuntimeError("the demo load balancer went to ERROR; see `cohort status`")
    vip = lb["vip_address"]
    console.print(f"[green]Load balancer ACTIVE[/green] in {time.monotonic() - started:.1f}s, VIP {vip}")
    seen = []
    for _ in range(12):
        result = lab.exec_client(["curl", "-s", "--max-time", "3", f"http://{vip}/"])
        seen.append(result.stdout.strip() or f"(no answer: {result.stderr.strip()})")
    console.print(f"12 requests from the client namespace were answered by the members: {', '.join(seen)}")
    _show_amphorae(client, lb["id"], console)
    env = "" if settings.state_dir == Path("/var/lib/cohort") else f"COHORT_STATE_DIR={settings.state_dir} "
    console.print()
    console.print("[bold]Try it:[/bold]")
    for line in (f"{env}.venv/bin/cohort lab exec client -- curl -s http://{vip}/",
                 f"export OS_AUTH_TYPE=none OS_ENDPOINT={base}",
                 ".venv/bin/openstack loadbalancer list",
                 ".venv/bin/openstack loadbalancer status show demo",
                 ".venv/bin/openstack loadbalancer amphora list",
                 f"{env}.venv/bin/cohort status",
                 f"{env}make down     # stop Cohort and remove everything it made"):
        console.print(f"  {line}", soft_wrap=True, highlight=False)


def _show_amphorae(client: httpx.Client, lb_id: str, console: Console) -> None:
    """Which amphorae carried those requests, from their own heartbeat statistics."""
    time.sleep(2.5)
    amphorae = client.get("/octavia/amphorae", params={"loadbalancer_id": lb_id}).json()["amphorae"]
    for amphora in amphorae:
        stats = client.get(f"/octavia/amphorae/{amphora['id']}/stats").json()["amphora_stats"]
        total = sum(row["total_connections"] for row in stats)
        console.print(f"  amphora {amphora['id'][:8]} ({amphora['role']}, {amphora['vrrp_ip']}): "
                      f"{total} connections")


def _demo_flavor(client: httpx.Client, flavor_data: dict[str, Any]) -> str:
    import json

    profile = client.post("/lbaas/flavorprofiles", json={"flavorprofile": {
        "name": "demo-profile", "provider_name": "amphora", "flavor_data": json.dumps(flavor_data)}}).json()
    flavor = client.post("/lbaas/flavors", json={"flavor": {
        "name": f"demo-{flavor_data.get('loadbalancer_topology', 'x').lower()}",
        "flavor_profile_id": profile["flavorprofile"]["id"]}}).json()
    return str(flavor["flavor"]["id"])


def run_demo_in_background(settings: Settings, console: Console) -> None:
    def target() -> None:
        try:
            run_demo(settings, console)
        except Exception as exc:  # noqa: BLE001 - the server keeps running; say what failed
            console.print(f"[red]Demo failed:[/red] {exc}")

    threading.Thread(target=target, name="demo", daemon=True).start()


def teardown(settings: Settings, console: Console) -> None:
    """Stop a detached Cohort, then remove every amphora, the lab and the state it made."""
    pid = _running_pid(settings)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        console.print(f"Stopped Cohort (pid {pid}).")
    pid_file(settings).unlink(missing_ok=True)
    remove_data_plane(settings, console)


def remove_data_plane(settings: Settings, console: Console) -> None:
    """Every instance, the lab and the files Cohort made (see ``cohort.harness.teardown``)."""
    harness_teardown(settings, say=console.print)
