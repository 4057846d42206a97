"""UDP through the amphora's kernel: packets/s and new flows/s, direct, through one amphora, and
through ACTIVE_ACTIVE N = 2, 3, 4 (L2 distributor) against SINGLE, amphorae capped.

In one run, on a private lab with Cohort on local drivers (``bench.common.bench_env``):

- Members are UDP echo servers (``bench.udp.load echo``, two processes each on one
  ``SO_REUSEPORT`` address) in namespaces of the benchmark on the back-end bridge. Load
  balancers side by side: SINGLE and ACTIVE_ACTIVE with ``amp_cluster_size`` N (SOURCE_IP_PORT
  affinity, so one client's flows spread), each a UDP listener over a ROUND_ROBIN pool of the
  members, every amphora capped by the flavor's ``compute_flavor`` at ``--cap`` CPU.
- Two measures, each a bounded run of ``bench.udp.load`` (several processes, non-blocking
  sockets under epoll): **packets/s**, request/response pairs answered per second over
  persistent flows (closed loop, ``--per-amphora`` sockets per amphora of the target, one
  datagram outstanding each); **flows/s**, new flows answered per second (each a socket bound
  to a source address and port no flow of the last two minutes used, one datagram and its
  answer; ``--flows-per-amphora`` in flight per amphora). DIRECT loads the members from a
  namespace on the back-end bridge; the load balancers are loaded from the lab's client
  namespace. Both generators' sends are processed in their port's kernel thread
  (``bench.common.nic_kthread``), as another host's NIC would.
- The cap. A UDP listener is nftables in the amphora's namespace: no amphora process sees a
  datagram, and on one machine the kernel's work for a packet runs in whoever sent it, so a
  cgroup cap never reaches it; nor does it reach a kernel thread placed in the cgroup on this
  kernel (Linux 6.18 throttles a task on its return to user space). The main part therefore
  processes each amphora link's receive in a NAPI kernel thread of its own and gives the
  amphora's threads a SCHED_DEADLINE reservation of ``--kernel-cap`` CPU (``bench.udp.napi``),
  as a VM's capped vCPUs would run its kernel; the flavor's cgroup cap (``--cap``) holds the
  amphora's processes (its agent). Targets: DIRECT, SINGLE-uncapped (the same amphora, its
  threads not reserved: one amphora against direct access), SINGLE and AA2..AA4 (capped). The
  last part puts the links back as the lab makes them and measures DIRECT, SINGLE and the
  largest cluster again: the amphora's kernel work then runs in its senders' context, under no
  cap at all.
- Each repetition runs every target once per measure, in an order rotating by one, so machine
  noise hits all of them alike; figures are medians, ratios X_N / SINGLE (also paired per
  repetition) and scaling efficiency (X_N / SINGLE) / N. With every run go the CPU of the
  generator, the members, the client's NIC thread (which also carries the gateway's and the
  distributor's forwarding), each amphora's NAPI threads and processes, the switch side, the
  whole machine and other processes on it, and a verdict of what limited the target
  (``report.bottleneck``).

Run as root, serialised with other users of the lab's namespaces:
``flock /tmp/cohort-ns.lock .venv/bin/python -m bench.udp`` (about 6 minutes; ``--quick`` for
a smoke run of every part in about 90 s, written to a temporary directory). Writes
``bench/results/udp.json``; ``--report FILE`` recomputes and prints a results file's figures
from its runs, without a run.

Modules: ``cli`` (arguments), ``load`` (the tools run in the lab's namespaces: echo member,
probe, generators; started as ``python -m bench.udp.load``, importing nothing heavy), ``napi``
(the amphora links' kernel threads), ``setup`` (members, namespaces, sources, load balancers),
``measure`` (targets and one run), ``report`` (figures, tables); ``__main__`` runs them in order.
"""
