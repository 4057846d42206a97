"""Render keepalived's VRRP configuration for an ACTIVE_STANDBY amphora.

One vrrp_instance per load balancer: unicast VRRP between the amphorae's own
front-end addresses (``vrrp_ip``), the VIP as the virtual address on the
front-end interface, and a track script that drops the amphora's priority when
the load balancer's HAProxy is gone: ``pgrep -F {state_dir}/{lb.id}.pid``
succeeds only while the pid in HAProxy's pid file is alive (no shell, nothing
for keepalived's ``$`` expansion to touch).

The MASTER starts ``MASTER`` and takes the VIP at once; the BACKUP starts ``BACKUP``
with ``nopreempt``, so a BACKUP that joins (a replacement) never takes the VIP from a
working MASTER, whatever the priorities. When the MASTER is replaced, the controller makes
the surviving BACKUP the MASTER and the replacement the BACKUP (``amphorae.promote_survivor``):
the role shown is the one serving, and a failover moves the VIP once, not twice.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from cohort.datamodel import Amphora, LoadBalancer
from cohort.drivers.amphora import haproxy_values as v

DEFAULT_STATE_DIR = "/var/lib/cohort-amphora"
PGREP = "/usr/bin/pgrep"
# The user of the amphora's jail (cohort.agents.common.jail), which keepalived runs in: the
# track script runs as that same unprivileged user and sees only its processes.
SCRIPT_USER = "cohort-jail"
_PRIORITIES = {"MASTER": 100, "BACKUP": 90}
CHECK_INTERVAL = 1
CHECK_FALL = 2
CHECK_RISE = 2


def _vrrp_ip(amphora: Amphora) -> str:
    if not amphora.vrrp_ip:
        raise ValueError(f"amphora {amphora.id} has no vrrp_ip")
    return v.ip(amphora.vrrp_ip, f"amphora {amphora.id} vrrp_ip").compressed


def render_keepalived(
    lb: LoadBalancer,
    amphora: Amphora,
    peers: Sequence[Amphora],
    interface: str = "fe0",
    state_dir: str = DEFAULT_STATE_DIR,
) -> str:
    """keepalived.conf for ``amphora``; ``peers`` may include it (it is skipped)."""
    v.name(lb.id, "load balancer id")
    if amphora.role not in _PRIORITIES:
        raise ValueError(f"amphora {amphora.id}: VRRP needs role MASTER or BACKUP, not {amphora.role}")
    if amphora.vrrp_id is None or not 1 <= amphora.vrrp_id <= 255:
        raise ValueError(f"amphora {amphora.id}: vrrp_id {amphora.vrrp_id} is not in 1-255")
    priority = amphora.vrrp_priority if amphora.vrrp_priority is not None else _PRIORITIES[amphora.role]
    if not 1 <= priority <= 254:
        raise ValueError(f"amphora {amphora.id}: vrrp_priority {priority} is not in 1-254")
    if not lb.vip_address:
        raise ValueError(f"load balancer {lb.id} has no VIP address")
    vip = v.ip(lb.vip_address, "VIP")
    src = _vrrp_ip(amphora)
    if v.ip(src, "vrrp_ip").version != vip.version:
        raise ValueError(f"amphora {amphora.id}: vrrp_ip {src} and VIP {vip} are of different families")
    others = sorted({_vrrp_ip(peer) for peer in peers if peer.id != amphora.id} - {src})
    if not others:
        raise ValueError(f"amphora {amphora.id}: ACTIVE_STANDBY needs at least one peer")
    dev = v.interface(interface)
    pidfile = posixpath.join(state_dir, f"{lb.id}.pid")
    if any(c.isspace() or c == '"' for c in pidfile):
        raise ValueError(f"state_dir {state_dir!r} must not contain blanks or quotes")
    prefix = 32 if vip.version == 4 else 128
    script = f"cohort_check_{lb.id}"
    lines = [
        f"# Load balancer {lb.id} on amphora {amphora.id}; rendered by cohort, do not edit.",
        "global_defs {",
        f"    router_id {v.name(amphora.id, 'amphora id')}",
        "    enable_script_security",
        f"    script_user {SCRIPT_USER}",
        "    vrrp_garp_master_delay 1",
        "    vrrp_garp_master_refresh 10",
        "    vrrp_garp_master_refresh_repeat 2",
        "}",
        "",
        f"vrrp_script {script} {{",
        f'    script "{PGREP} -F {pidfile}"',
        f"    interval {CHECK_INTERVAL}",
        f"    fall {CHECK_FALL}",
        f"    rise {CHECK_RISE}",
        "}",
        "",
        f"vrrp_instance cohort_{lb.id} {{",
        f"    state {amphora.role}",
        *(["    nopreempt"] if amphora.role == "BACKUP" else []),
        f"    interface {dev}",
        f"    virtual_router_id {amphora.vrrp_id}",
        f"    priority {priority}",
        "    advert_int 1",
        "    garp_master_delay 1",
        "    garp_master_refresh 10",
        "    garp_master_refresh_repeat 2",
        f"    unicast_src_ip {src}",
        "    unicast_peer {",
        *(f"        {peer}" for peer in others),
        "    }",
        "    virtual_ipaddress {",
        f"        {vip.compressed}/{prefix} dev {dev}",
        "    }",
        "    track_script {",
        f"        {script}",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"
