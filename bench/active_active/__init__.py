"""Active-active N+1: N capped amphorae behind the L2 distributor or over L3 (BGP + ECMP) against
one, the latency the distributor adds, what scaling 3->4->3 does to open and new connections,
and what an amphora's death does to new ones.

In one run, on a private lab with Cohort on local drivers (see ``bench.common``):

1. throughput. Load balancers live side by side, each with the same ROUND_ROBIN pool of lab
   members: SINGLE (one amphora, no distributor), ACTIVE_ACTIVE with ``amp_cluster_size`` 2, 3
   and 4 (SOURCE_IP_PORT affinity, so one client spreads), and (``--matched``) three more
   SINGLE load balancers for the load-matched baselines SINGLEx2..4: N SINGLE load balancers
   loaded at once, each by its own wrk with 1/N of the connections, so that the machine
   carries the traffic of an N-amphora cluster. Every amphora is capped by the flavor's
   ``compute_flavor`` at ``--cap`` CPU. ``wrk -t2 -c64`` from the lab's client namespace
   measures requests/s over keep-alive connections and new connections/s (``Connection:
   close``); each repetition runs every configuration once, in a rotating order, so machine
   noise hits all alike. Figures are medians; scaling efficiency is (AA_N / SINGLE) / N, and
   the load-matched efficiency the median of the repetitions' AA_N / SINGLExN (what the
   distributor costs, apart from what a busier 2-vCPU machine costs every amphora). The
   client's packets are processed in a kernel thread of their own (``--client-kthread``, see
   ``bench.common.client_nic_kthread``): otherwise the client's answers to an amphora, and
   their way through the gateway and the distributor, are billed to that amphora's capped
   cgroup. With each run go the CPU of the members, wrk, each amphora (and its HAProxy), the
   distributor agent, this process (Cohort runs in it), kernel threads, other processes on
   the machine and the whole machine, and each amphora's cgroup throttling: a saturated
   amphora is throttled in most 100 ms CFS periods. The default cap, 0.05 CPU, is what keeps
   the amphorae the limit on a 2-vCPU machine; the same throughput is then measured again,
   fewer and shorter runs, at ``--compare-cap`` (0.25) on fresh load balancers, where the
   machine is.
1b. efficiency (``efficiency``): the per-amphora scaling efficiency against the load-matched
   baselines, with each cluster run right beside its baseline (per N: L2 cluster, SINGLExN, L3
   cluster, the clusters swapping places every other repetition), ``--efficiency-repetitions``
   (12) times in each mode; per cluster the median of its rate over the adjacent baseline's,
   with a bootstrap 95% interval. The throughput rotation puts a cluster and its baseline up to
   a minute apart, and on this shared machine that alone moves a rate by 10-20%.
2. latency the distributor adds, at low load, on the N=4 cluster of the last set: one
   sampler (SCHED_FIFO, in a namespace of the benchmark on the lab's front-end bridge)
   alternates sample by sample between two source addresses; from one the VIP is on-link
   (the distributor answers ARP for it), the other is policy-routed to one amphora's
   front-end address. Replies come straight from the amphora either way. Samples: TCP connect
   time (SYN to SYN-ACK, answered by the amphora's kernel) and keep-alive HTTP request time
   (through HAProxy to a member), timed with ``time.perf_counter_ns``, 1 ms apart.
3. scale-out 3->4 and scale-in 4->3 of the N=3 cluster with ``PUT /v2/octavia/clusters/{id}``
   under load: 60 keep-alive connections each sending a request every 50 ms (opened afresh
   before each change), and a stream of new short connections. Which amphora holds each
   long-lived connection comes from ``ss`` in every amphora's namespace before and after; a
   request that fails on one is a broken connection, a clean close by the server between
   requests is counted apart. Which amphora a NEW flow goes to comes from 2000 connections
   from fixed source ports (above the client namespace's ephemeral range) made before and
   after each change, looked up in the distributor's flow-pinning map; the fraction that
   changed amphora is compared with the ideal 1/4.

4. L3 (``--l3``, the default; ``l3``, ``l3_run``, ``l3_scaling``, ``failover``): the lab's
   gateway runs FRR (MD5, GTSM, multipath); an operator's BGP speaker and peer with BFD
   (100/100 ms x 3) and ``L3_BGP`` flavors build ``L3AA2..4``, which join the throughput
   rotation above beside ``AA2..4`` (every amphora announces the VIP, the router spreads flows
   with ECMP, no distributor). Then: each amphora's speaker memory (RSS of its ``bird``);
   3->4->3 of ``L3AA3`` under the long-lived load of part 3, with the plain hash-threshold
   router; the new-connection failure window when an amphora is killed (``kill -9`` of every
   process in its namespace) under a stream of new connections, for ``AA3`` (the distributor's
   probes), ``L3AA3`` (BFD) and ``L3HOLD3`` (a second speaker whose peer has hold timers only,
   3 s / 1 s), each ``--failover-repeats`` times, with the time until the replacement carries
   traffic (the router's route has N next hops again and the new HAProxy's counters grow);
   last, the router restarted with resilient next-hop groups and 3->4->3 again. The L3 load
   balancers are deleted before the comparison at a second cap and the latency part.

Run as root: ``.venv/bin/python -m bench.active_active`` (``--help`` for the knobs; about 25
minutes; ``--quick`` for a smoke run of every part, small and short, in about six minutes,
written to a temporary directory). Writes ``bench/results/active_active.json`` and ``bench/results/active_active.png``.

The benchmark observes the system under test as an operator would: through the Octavia v2
API (load balancers, and the admin API's amphorae, clusters and distributors), the
distributor agent's status endpoint, HAProxy's stats sockets, and the kernel's own facts in
the lab's namespaces (``ss``, ``nft``, cgroups); never through Cohort's database.

Modules: ``cli`` (arguments, console), ``tools`` (what runs inside the lab's namespaces),
``setup`` (load balancers and baselines under test, the distributor), ``census`` (whose CPU
it was), ``throughput``, ``efficiency``, ``latency``, ``scaling``, ``l3`` (router, speakers, L3 load
balancers, speaker memory), ``l3_scaling``, ``failover``, ``l3_run`` (the L3 parts in order),
``report`` and ``report_l3`` (tables, plot); ``__main__`` runs them in order.
"""
