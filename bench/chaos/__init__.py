"""Chaos benchmark: faults under load, side by side for SINGLE, ACTIVE_STANDBY and ACTIVE_ACTIVE (L2, L3).

``python -m bench.chaos`` (as root, under ``flock /tmp/cohort-ns.lock``) builds one private lab
with Cohort's API and controllers as processes (``plane``), a spare amphora pool, and one load
balancer of each topology (``topologies``). Then, for each repeat, each fault (``faults``) on
each topology it applies to, an episode (``episode``): an open-loop stream of new connections
and long-lived keep-alive connections from the lab's client namespace (``load``), the fault,
and observations until the load balancer is at full strength again (``strength``). Figures
(``measure``): the window of failed new connections (first to last failed attempt start; an
attempt fails after its 1 s connect or 2 s response timeout), the long-lived connections broken
on the failed amphora and elsewhere, the time to full strength and to a listed replacement, as
medians over the repeats with the worst beside them, and the issue's targets. Output: a table
on the console (``report``) and ``bench/results/chaos.json``.
"""
