"""The contract of PROMETHEUS listeners between the HAProxy renderer and the amphora agent.

Both sides need the same names: the unix sockets of HAProxy's exporter and of the agent's
renaming proxy, the internal proxy names, the ids of listeners and pools in a rendered
configuration, and the renaming of HAProxy's metric families to Octavia's. They live here so
that the agent, which runs inside an amphora, imports nothing of the controller's drivers.
The flow of a scrape is described in ``cohort.drivers.amphora.haproxy_prometheus``.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Collection

EXPORTER_FRONTEND = "cohort-prometheus-exporter"
AGENT_BACKEND = "cohort-prometheus-agent"

# family prefix -> (Octavia prefix, label renames, label naming the object)
_FAMILIES: dict[str, tuple[str, dict[str, str], str | None]] = {
    "haproxy_process_": ("octavia_loadbalancer_", {}, None),
    "haproxy_frontend_": ("octavia_listener_", {"proxy": "listener"}, "listener"),
    "haproxy_backend_": ("octavia_pool_", {"proxy": "pool"}, "pool"),
    "haproxy_server_": ("octavia_member_", {"proxy": "pool", "server": "member"}, "pool"),
}
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S.*)$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def exporter_socket(state_dir: str, lb_id: str) -> str:
    return posixpath.join(state_dir, f"{lb_id}-prometheus.sock")


def agent_socket(state_dir: str, lb_id: str) -> str:
    return posixpath.join(state_dir, f"{lb_id}-metrics.sock")


def _rename_family(name: str) -> tuple[str, dict[str, str], str | None] | None:
    for prefix, (octavia, labels, owner) in _FAMILIES.items():
        if name.startswith(prefix):
            return octavia + name[len(prefix) :], labels, owner
    return None


def _parse_labels(text: str) -> list[tuple[str, str]] | None:
    labels: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        if match is None or match.end() == pos:
            return None
        labels.append((match.group(1), match.group(2)))
        pos = match.end()
    return labels


def proxy_ids(config: str) -> tuple[frozenset[str], frozenset[str]]:
    """Listener and pool ids of a rendered configuration: its frontends and backends.

    What the agent, which never sees the load balancer itself, renames against;
    the renderer's internal proxies (named ``cohort-*``) are left out.
    """
    listeners: set[str] = set()
    pools: set[str] = set()
    for line in config.splitlines():
        kind, _, name = line.partition(" ")
        name = name.strip()
        if not name or name.startswith("cohort-"):
            continue
        if kind == "frontend":
            listeners.add(name)
        elif kind == "backend":
            pools.add(name)
    return frozenset(listeners), frozenset(pools)


def rename_metrics(text: str, listener_ids: Collection[str], pool_ids: Collection[str]) -> str:
    """HAProxy exporter text -> Octavia's metric and label names.

    Families other than process/frontend/backend/server are dropped, and so are
    samples of proxies that are not one of ``listener_ids`` or ``pool_ids`` (the
    exporter's own frontend, the agent backend).
    """
    known = {"listener": listener_ids, "pool": pool_ids}
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            head, _, rest = line[2:].partition(" ")
            name, _, tail = rest.partition(" ")
            renamed = _rename_family(name)
            if renamed is not None:
                out.append(f"# {head} {renamed[0]} {tail}".rstrip())
            continue
        sample = _SAMPLE.match(line)
        if sample is None:
            continue
        renamed = _rename_family(sample.group(1))
        if renamed is None:
            continue
        new_name, label_map, owner = renamed
        labels = _parse_labels(sample.group(2) or "")
        if labels is None:
            continue
        labels = [(label_map.get(key, key), value) for key, value in labels]
        if owner is not None and not any(key == owner and value in known[owner] for key, value in labels):
            continue
        rendered = "{" + ",".join(f'{key}="{value}"' for key, value in labels) + "}" if labels else ""
        out.append(f"{new_name}{rendered} {sample.group(3)}")
    return "\n".join(out) + "\n" if out else ""
