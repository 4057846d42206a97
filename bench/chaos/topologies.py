"""The load balancers of a chaos run, side by side on one lab, built through the Octavia v2 API.

SINGLE, ACTIVE_STANDBY, ACTIVE_ACTIVE behind the L2 distributor pair (SOURCE_IP_PORT, so the
client's connections spread over the amphorae) and ACTIVE_ACTIVE over L3 (``L3_BGP``: each
amphora's BIRD peers with the lab's FRR router, MD5 + GTSM, BFD 100 ms x 3, the session profile
of ``bench.active_active.l3``), all with the spares' compute flavor. With ``no_spares`` one more
L2 cluster whose compute flavor differs from the spares' (a memory limit), so its replacements
boot: the comparison row.
"""

from __future__ import annotations

from typing import Any

from bench.active_active.l3 import configure_router, create_speaker, wait_routes
from bench.active_active.setup import Config, wait_serving
from bench.chaos.cli import console
from bench.chaos.episode import Target
from bench.common import BenchEnv, BenchError

NO_SPARE_MEMORY_MB = 1024


def specs(size: int, compute: dict[str, Any], speaker: str | None, no_spares: bool
          ) -> list[tuple[str, str, int, dict[str, Any], bool]]:
    """(label, kind, amphorae, flavor data, spares) of each load balancer of the run."""
    extra: dict[str, Any] = {"compute_flavor": compute} if compute else {}
    aa: dict[str, Any] = {"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": size, "amp_cluster_min_size": 2}
    out: list[tuple[str, str, int, dict[str, Any], bool]] = [
           ("SINGLE", "single", 1, {"loadbalancer_topology": "SINGLE", **extra}, True),
           ("ACTIVE_STANDBY", "standby", 2, {"loadbalancer_topology": "ACTIVE_STANDBY", **extra}, True),
           ("ACTIVE_ACTIVE L2", "l2", size, {**aa, "distributor_affinity": "SOURCE_IP_PORT", **extra}, True)]
    if speaker is not None:
        out.append(("ACTIVE_ACTIVE L3", "l3", size, {**aa, "distributor_type": "L3_BGP", "bgp_speaker_id": speaker,
                                                      **extra}, True))
    if no_spares:
        out.append(("ACTIVE_ACTIVE L2, no spares", "l2", size, {
            **aa, "distributor_affinity": "SOURCE_IP_PORT",
            "compute_flavor": {**compute, "memory_mb": NO_SPARE_MEMORY_MB}}, False))
    return out


def build_targets(env: BenchEnv, members: list[str], names: set[str], size: int, compute: dict[str, Any],
                  l3: bool, no_spares: bool, bfd_ms: int = 100) -> list[Target]:
    """Every load balancer created at once, then each waited for: ACTIVE, serving, (L3) routed."""
    speaker = None
    if l3:
        configure_router(env, resilient=False)
        speaker = create_speaker(env, "bfd", bfd_min_rx=bfd_ms, bfd_min_tx=bfd_ms)
    created = []
    for label, kind, n, data, spares in specs(size, compute, speaker, no_spares):
        slug = label.lower().replace(",", "").replace(" ", "-")
        lb = env.create_lb(f"chaos-{slug}", members, env.flavor(f"chaos-{slug}", data))
        created.append((label, kind, n, lb["id"], spares))
    targets = []
    for label, kind, n, lb_id, spares in created:
        vip = env.wait_vip(lb_id)
        env.wait_active(lb_id, timeout=300)
        cfg = Config(label, n, lb_id, vip, {}, env.cluster_of(lb_id) if kind in ("l2", "l3") else None,
                     l3=kind == "l3")
        cfg.refresh(env)
        if len(cfg.amphorae) != n:
            raise BenchError(f"{label}: {len(cfg.amphorae)} amphorae, expected {n}")
        if kind == "l3":
            wait_routes(env, cfg, n)
        wait_serving(env, vip, names)
        targets.append(Target(label, kind, cfg, spares, frozenset(names)))
        console.print(f"  {label}: VIP {vip}, {n} amphorae")
    return targets
