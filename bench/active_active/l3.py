"""L3 ACTIVE_ACTIVE under test: the lab's FRR router, BGP session profiles, L3 load balancers, speakers.

Owns what an operator sets up for L3 through the public API: a BGP speaker and its peer (the
lab router, 203.0.113.1, AS 64512, MD5 and GTSM) either with BFD (100/100 ms x 3) or with hold
timers only (hold 3 s, keepalive 1 s), and ``L3_BGP`` flavors; the L3 load balancers built
with them (``L3AA2..4`` beside the L2 ``AA2..4``, ``L3HOLD3`` for the hold-timer failure
window); what the router has installed (``lab.router.routes()``: VIP -> next hops in its
kernel); and the memory of each amphora's speaker, the ``bird`` process found among the
namespace's processes (``ip netns pids``), read from ``/proc``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.active_active.cli import console
from bench.active_active.setup import Config, wait_serving
from bench.common import BenchEnv, BenchError, cgroup_quota, median
from cohort import netns
from cohort.lab import Lab
from cohort.lab.router import RouterSettings

ROUTER_PASSWORD = "bench-md5-secret"
ROUTER_AS, ROUTER_IP, SPEAKER_AS = 64512, "203.0.113.1", 64600
SESSIONS = {
    "bfd": {"hold_time": 9, "keepalive_interval": 3, "bfd_enabled": True, "bfd_min_rx": 100, "bfd_min_tx": 100,
            "bfd_multiplier": 3},
    "hold": {"hold_time": 3, "keepalive_interval": 1, "bfd_enabled": False},
}


def configure_router(env: BenchEnv, resilient: bool) -> None:
    """The lab router's settings (restarts FRR when it runs): MD5, GTSM, plain or resilient ECMP."""
    env.lab.router.configure(RouterSettings(asn=ROUTER_AS, password=ROUTER_PASSWORD, resilient=resilient))


def create_speaker(env: BenchEnv, kind: str, **profile: Any) -> str:
    """A BGP speaker with one peer, the lab router, with session profile ``kind`` (bfd | hold), whose
    settings ``profile`` overrides (``bfd_min_rx=50``, say); its id."""
    status, body = env.api.post("/v2/octavia/bgp_speakers", {"bgp_speaker": {
        "name": f"bench-{kind}", "local_as": SPEAKER_AS, "ip_version": 4}})
    if status != 201:
        raise BenchError(f"bgp speaker: {status} {body}")
    speaker_id = str(body["bgp_speaker"]["id"])
    status, body = env.api.post("/v2/octavia/bgp_peers", {"bgp_peer": {
        "name": f"bench-{kind}-tor", "bgp_speaker_id": speaker_id, "peer_ip": ROUTER_IP, "remote_as": ROUTER_AS,
        "auth_type": "md5", "md5_password": ROUTER_PASSWORD, "ttl_hops": 1, **SESSIONS[kind], **profile}})
    if status != 201:
        raise BenchError(f"bgp peer: {status} {body}")
    return speaker_id


def build_l3(env: BenchEnv, members: list[str], names: set[str], cap: float, speaker_id: str,
             wanted: list[tuple[str, int]]) -> list[Config]:
    """L3 load balancers (name, N) with the speaker's session profile, built side by side, serving."""
    created = []
    for name, n in wanted:
        flavor = env.flavor(f"{name.lower()}-{cap}", {
            "loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": n, "amp_cluster_min_size": 2,
            "distributor_type": "L3_BGP", "bgp_speaker_id": speaker_id, "compute_flavor": {"cpu": cap}})
        created.append((name, n, env.create_lb(f"{name.lower()}-{cap}", members, flavor)))
    configs = []
    for name, n, lb in created:
        vip = env.wait_vip(lb["id"])
        env.wait_active(lb["id"], timeout=180)
        cfg = Config(name, n, lb["id"], vip, {}, env.cluster_of(lb["id"]), l3=True)
        cfg.refresh(env)
        if len(cfg.amphorae) != n:
            raise BenchError(f"{name}: {len(cfg.amphorae)} amphorae, expected {n}")
        for ns in cfg.amphorae:
            if cgroup_quota(Lab.instance_cgroup(ns)) != cap:
                raise BenchError(f"{name}: amphora {ns} has CPU quota {cgroup_quota(Lab.instance_cgroup(ns))}")
        wait_routes(env, cfg, n)
        wait_serving(env, vip, names)
        configs.append(cfg)
        console.print(f"  {name}: VIP {vip}, amphorae {sorted(cfg.amphorae)}, router next hops "
                      f"{env.lab.router.routes().get(vip)}")
    return configs


def front_ends(env: BenchEnv, lb_id: str) -> dict[str, str]:
    """Amphora id -> front-end address (``vrrp_ip``) of a load balancer's live amphorae (admin API)."""
    rows = env.admin_list("amphorae", "amphorae", loadbalancer_id=lb_id)
    return {str(r["id"]): str(r["vrrp_ip"]) for r in rows if r["status"] != "DELETED" and r.get("vrrp_ip")}


def wait_routes(env: BenchEnv, cfg: Config, count: int, timeout: float = 90.0) -> float:
    """Wait until the router has installed ``count`` next hops, the amphorae's front ends, for the VIP."""
    started = time.monotonic()
    while True:
        hops = env.lab.router.routes().get(cfg.vip, [])
        if len(hops) == count and set(hops) == set(front_ends(env, cfg.lb_id).values()):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise BenchError(f"{cfg.name}: the router has next hops {hops} for {cfg.vip}, wanted {count}")
        time.sleep(0.1)


def _status_fields(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _kb(value: str) -> int:
    return int(value.split()[0]) if value else 0


def speaker_memory(env: BenchEnv, configs: list[Config]) -> dict[str, Any]:
    """Resident memory of each amphora's ``bird`` (uid: the amphora's jail uid), per amphora and summed up."""
    instances = env.lab.snapshot().get("instances", {})
    rows: list[dict[str, Any]] = []
    for cfg in configs:
        cfg.refresh(env)
        for ns, amphora_id in sorted(cfg.amphorae.items()):
            jail_uid = next((r.get("jail_uid") for r in instances.values() if r.get("compute_id") == ns), None)
            for pid in sorted(netns.netns_pids(env.lab.instance_ns(amphora_id, "amphora"))):
                try:
                    if Path(f"/proc/{pid}/comm").read_text().strip() != "bird":
                        continue
                    status = _status_fields(pid)
                    rollup = {k: _kb(v) for k, _, v in (line.partition(":") for line in
                              Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])}
                except OSError:
                    continue
                rows.append({"load_balancer": cfg.name, "amphora": ns, "pid": pid,
                             "uid": int(status["Uid"].split()[0]), "jail_uid": jail_uid,
                             "rss_kb": _kb(status.get("VmRSS", "")), "rss_anon_kb": _kb(status.get("RssAnon", "")),
                             "pss_kb": rollup.get("Pss", 0)})
    amphorae = sum(len(c.amphorae) for c in configs)
    if len(rows) != amphorae:
        raise BenchError(f"found {len(rows)} bird processes in {amphorae} L3 amphorae")
    rss = [r["rss_kb"] / 1024 for r in rows]
    return {"method": "VmRSS / RssAnon from /proc/<pid>/status, Pss from smaps_rollup, of the process whose comm "
                      "is bird among `ip netns pids <amphora namespace>`",
            "amphorae": amphorae, "all_run_as_jail_uid": all(r["uid"] == r["jail_uid"] for r in rows),
            "rss_mb_median": median(rss), "rss_mb_max": max(rss),
            "rss_anon_mb_median": median([r["rss_anon_kb"] / 1024 for r in rows]),
            "pss_mb_median": median([r["pss_kb"] / 1024 for r in rows]),
            "target_mb": 10, "meets_target": max(rss) < 10, "processes": rows}
