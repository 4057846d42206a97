"""The amphora agent: an HTTPS (mutual TLS) API that runs HAProxy, keepalived and the VIP plumbing.

It lives inside the amphora's network namespace, learns everything through its
own ``/1.0`` API (modelled on Octavia's amphora agent) and reports health with
signed UDP heartbeats. Processes it starts outlive it, so that restarting the
agent never interrupts traffic.
"""

AGENT_VERSION = "1.0"
