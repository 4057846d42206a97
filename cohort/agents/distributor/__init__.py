"""The distributor agent: an HTTPS (mutual TLS) API that programs the L2 Distributor's data path.

It runs inside the distributor's network namespace, owns the VIPs' ARP there, keeps each
VIP's Maglev bucket table, flow pinning and policy routing in the kernel (nftables and
``ip rule``), probes the amphorae and reports with signed UDP heartbeats. Its state file
lets a restarted agent re-apply the same configuration without disturbing a single flow.
"""

AGENT_VERSION = "1.0"
