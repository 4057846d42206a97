"""`cohort status`: rich tables of load balancers, clusters and amphorae straight from the database."""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from cohort.config import Settings
from cohort.db import models as m
from cohort.db.infra import distributor_operating_status, serves_vips
from cohort.db.session import make_engine, make_sessionmaker

COLOURS = {"ACTIVE": "green", "ONLINE": "green", "ALLOCATED": "green", "ERROR": "red", "DEGRADED": "yellow",
           "OFFLINE": "dim", "MASTER": "green", "BACKUP": "white", "FAULT": "red"}


def _c(value: str | None) -> str:
    text = value or "-"
    colour = COLOURS.get(text, "cyan" if text.startswith("PENDING") else "white")
    return f"[{colour}]{text}[/{colour}]"


def _bgp(health: m.AmphoraHealth | None) -> tuple[str, str]:
    """An L3 amphora's sessions (peer: state) and announced VIPs, as its last heartbeat said."""
    if health is None or not health.bgp:
        return "-", "-"
    try:
        report = json.loads(health.bgp)
    except ValueError:
        return "?", "?"
    sessions = ", ".join(f"{peer} {state}" for peer, state in sorted((report.get("sessions") or {}).items()))
    return sessions or "-", ", ".join(report.get("announced") or []) or "-"


def render_status(settings: Settings, console: Console) -> None:
    engine = make_engine(settings.db_url)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        lbs = Table(title="Load balancers")
        for column in ("id", "name", "project", "topology", "vip", "provisioning", "operating", "listeners",
                       "reason"):
            lbs.add_column(column)
        for lb in session.scalars(select(m.LoadBalancer).order_by(m.LoadBalancer.created_at)):
            lbs.add_row(lb.id[:8], lb.name, lb.project_id, lb.topology, lb.vip_address or "-",
                        _c(lb.provisioning_status), _c(lb.operating_status), str(len(lb.listeners)),
                        (lb.status_reason or "")[:60])
        console.print(lbs)
        clusters = Table(title="Amphora clusters")
        for column in ("id", "load balancer", "desired", "min", "cooldown", "type", "provisioning", "operating",
                       "reason"):
            clusters.add_column(column)
        for cluster in session.scalars(select(m.AmphoraCluster)):
            clusters.add_row(cluster.id[:8], cluster.load_balancer_id[:8], str(cluster.desired_size),
                             str(cluster.min_size), str(cluster.cooldown), cluster.cluster_type,
                             _c(cluster.provisioning_status), _c(cluster.operating_status),
                             (cluster.status_reason or "")[:60])
        console.print(clusters)
        distributors = Table(title="Distributors")
        for column in ("id", "name", "type", "status", "role", "health", "management ip", "compute",
                       "load balancers", "reason"):
            distributors.add_column(column)
        now = time.time()
        for dist in session.scalars(select(m.Distributor).where(m.Distributor.status != "DELETED")
                                    .order_by(m.Distributor.name)):
            served = session.scalars(select(m.AmphoraCluster.load_balancer_id).where(
                m.AmphoraCluster.cluster_type == dist.distributor_type)).all() if serves_vips(dist) else []
            health = distributor_operating_status(dist.status, session.get(m.DistributorHealth, dist.id),
                                                  settings.distributor_stale_after, now)
            distributors.add_row(dist.id[:8], dist.name, dist.distributor_type, _c(dist.status),
                                 _c(dist.role), _c(health), dist.lb_network_ip or "-", dist.compute_id or "-",
                                 str(len(served)), (dist.status_reason or "")[:60])
        console.print(distributors)
        amphorae = Table(title="Amphorae")
        for column in ("id", "load balancer", "role", "status", "management ip", "front-end ip", "compute",
                       "BGP sessions", "announces"):
            amphorae.add_column(column)
        for amp in session.scalars(select(m.Amphora).where(m.Amphora.status != "DELETED")
                                   .order_by(m.Amphora.created_at)):
            sessions_text, announces = _bgp(session.get(m.AmphoraHealth, amp.id))
            amphorae.add_row(amp.id[:8], (amp.load_balancer_id or "-")[:8], amp.role or "-", _c(amp.status),
                             amp.lb_network_ip or "-", amp.frontend_ip or "-", amp.compute_id or "-",
                             sessions_text, announces)
        console.print(amphorae)
    engine.dispose()
