"""PROMETHEUS listeners: HAProxy's exporter, and its metrics under Octavia's names.

HAProxy names its metrics ``haproxy_*`` and labels them by proxy and server
names; Octavia exposes ``octavia_loadbalancer_*``, ``octavia_listener_*``,
``octavia_pool_*`` and ``octavia_member_*``. HAProxy cannot rename, so the path
of a scrape is:

    client -> VIP:port (frontend = the PROMETHEUS listener)
           -> backend ``cohort-prometheus-agent``: the agent, on the unix socket
              ``{state_dir}/{lb_id}-metrics.sock``
           -> the agent fetches ``/metrics`` from HAProxy's exporter on the unix
              socket ``{state_dir}/{lb_id}-prometheus.sock`` (frontend
              ``cohort-prometheus-exporter``), passes the text through
              ``rename_metrics`` (with the ids ``proxy_ids`` reads from the
              installed configuration) and answers
              (``cohort.agents.amphora.metrics``).

Unix sockets keep the exporter off every network and let several load
balancers share an amphora without port clashes.
"""

from __future__ import annotations

from cohort.datamodel import LoadBalancer
from cohort.prometheus import (
    AGENT_BACKEND,
    EXPORTER_FRONTEND,
    agent_socket,
    exporter_socket,
    proxy_ids,
    rename_metrics,
)

__all__ = ["AGENT_BACKEND", "EXPORTER_FRONTEND", "agent_socket", "exporter_socket", "internal_lines", "proxy_ids",
           "rename_metrics", "rename_prometheus_metrics"]


def internal_lines(lb: LoadBalancer, state_dir: str) -> list[str]:
    """The exporter frontend and the backend that reaches the agent's renaming proxy."""
    return [
        f"frontend {EXPORTER_FRONTEND}",
        f"    bind unix@{exporter_socket(state_dir, lb.id)} mode 600",
        "    mode http",
        "    timeout client 10s",
        "    http-request use-service prometheus-exporter",
        "",
        f"backend {AGENT_BACKEND}",
        "    mode http",
        "    timeout connect 5s",
        "    timeout server 30s",
        f"    server agent unix@{agent_socket(state_dir, lb.id)}",
    ]


def rename_prometheus_metrics(text: str, lb: LoadBalancer) -> str:
    """HAProxy exporter text -> Octavia's metric and label names, for the listeners and pools of ``lb``."""
    return rename_metrics(
        text,
        listener_ids={listener.id for listener in lb.listeners},
        pool_ids={pool.id for pool in lb.pools},
    )
