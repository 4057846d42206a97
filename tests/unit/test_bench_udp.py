"""The UDP benchmark's pure parts: port shares, source addresses, rotation, figures and verdicts, the
NAPI thread lookup, the tools' bounds, and the generators against a loopback echo."""

from __future__ import annotations

import argparse
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bench.common import LAB_NETWORKS
from bench.udp import load
from bench.udp.cli import parse_args
from bench.udp.measure import Target, offered_load, rotation, runtime_seconds, tool_args, tree_cpu, tree_delta
from bench.udp.napi import chrt_command, thread_of
from bench.udp.report import bottleneck, markdown, summarise
from bench.udp.setup import SourcePool, addresses_per_run


def test_ports_are_shared_out_without_overlap_and_without_gaps() -> None:
    sources, ports = ["198.51.100.20", "198.51.100.21"], (1024, 1033)
    shares = [list(load.flow_pairs(sources, ports, w, 3)) for w in range(3)]
    every = [pair for share in shares for pair in share]
    assert len(every) == len(set(every)) == load.pair_capacity(sources, ports) == 20
    assert [len(s) for s in shares] == [7, 7, 6]
    assert load.split_evenly(10, 3) == [4, 3, 3] and load.split_evenly(2, 4) == [1, 1, 0, 0]
    assert addresses_per_run(100_000) == 2 and addresses_per_run(63_977) == 1 and addresses_per_run(1) == 1


def test_source_addresses_are_reused_least_recently_and_only_when_old_enough() -> None:
    pool = SourcePool(["a", "b", "c", "d"], min_age=100.0)
    assert pool.take(2, now=0.0) == (["a", "b"], 0.0)
    assert pool.take(2, now=10.0) == (["c", "d"], 0.0)
    assert pool.take(2, now=50.0) == ([], 50.0)  # a and b were used at 0: wait until 100
    assert pool.take(1, now=100.0) == (["a"], 0.0)
    assert pool.take(2, now=111.0) == (["b", "c"], 0.0)


def test_targets_rotate_one_step_each_repetition() -> None:
    names = ["DIRECT", "SINGLE", "AA2"]
    targets = [Target(n, i, True) for i, n in enumerate(names)]
    assert [[t.name for t in rotation(targets, rep)] for rep in range(4)] == [
        names, ["SINGLE", "AA2", "DIRECT"], ["AA2", "DIRECT", "SINGLE"], names]


def test_offered_load_grows_with_the_amphorae_and_the_tool_is_told_it() -> None:
    args = parse_args([])
    assert offered_load(Target("DIRECT", 0, False), "pps", args) == 128
    assert offered_load(Target("AA3", 3, True), "flows", args) == 3 * 128
    pps = tool_args("pps", ["203.0.113.100:7007"], ["198.51.100.10"], 256, args)
    assert pps[0] == "pps" and pps[pps.index("--sockets") + 1] == "256" and "--concurrency" not in pps
    flows = tool_args("flows", ["203.0.113.100:7007"], ["198.51.100.20", "198.51.100.21"], 64, args)
    assert flows[flows.index("--sources") + 1] == "198.51.100.20,198.51.100.21"
    assert flows[flows.index("--max-count") + 1] == "100000"


def test_quick_mode_and_bounds() -> None:
    quick = parse_args(["--quick"])
    assert quick.sizes == [2] and quick.repetitions == 1 and "udp-quick" in str(quick.output)
    assert parse_args(["--sizes", "4,2,3"]).sizes == [2, 3, 4]
    for bad in (["--seconds", "100"], ["--sizes", "1"], ["--max-flows", "10"], ["--cap", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def tool_namespace(**kw: Any) -> argparse.Namespace:
    return load.tool_parser().parse_args(["pps", "--targets", kw.pop("targets", "203.0.113.100:7007"),
                                          *[x for k, v in kw.items() for x in (f"--{k}", str(v))]])


def test_the_tools_refuse_unbounded_runs_and_addresses_outside_the_lab() -> None:
    assert {str(n) for n in load.LAB_NETWORKS} == {str(n) for n in LAB_NETWORKS}
    load.check_tool_args(tool_namespace(sources="198.51.100.10"), load.check_lab_address)
    with pytest.raises(ValueError, match="outside"):
        load.check_tool_args(tool_namespace(targets="10.0.0.1:53"), load.check_lab_address)
    with pytest.raises(ValueError, match="outside"):
        load.check_tool_args(tool_namespace(sources="8.8.8.8"), load.check_lab_address)
    with pytest.raises(ValueError, match="bounds"):
        load.check_tool_args(tool_namespace(seconds=3600), load.check_lab_address)
    with pytest.raises(ValueError, match="bad target"):
        load.parse_targets("203.0.113.100")
    assert load.parse_targets("192.0.2.10:7007,192.0.2.11:7007") == [("192.0.2.10", 7007), ("192.0.2.11", 7007)]


def test_a_reservation_is_split_over_the_threads_and_undone() -> None:
    assert chrt_command(7, 0.01, 20_000) == ["chrt", "-d", "-T", "200000", "-D", "20000000", "-P", "20000000",
                                             "-p", "0", "7"]
    assert chrt_command(7, None, 20_000) == ["chrt", "-o", "-p", "0", "7"]
    assert chrt_command(7, 1e-9, 20_000)[3] == "1024"
    with pytest.raises(RuntimeError, match="does not fit"):
        chrt_command(7, 2.0, 20_000)


def test_threads_are_timed_by_the_scheduler_clock() -> None:
    me = os.getpid()
    first = runtime_seconds({me})
    sum(i * i for i in range(200_000))
    assert runtime_seconds({me}) > first > 0
    assert runtime_seconds({me, 2**22 + 12345}) >= first  # a thread gone counts nothing


def test_process_cpu_counts_reaped_children_and_never_goes_negative() -> None:
    assert tree_delta({1: 5.0, 2: 3.0}, {1: 6.5, 3: 0.5}) == pytest.approx(2.0)  # 2 gone: nothing, not -3
    me = tree_cpu({os.getpid(), 2**22 + 12345})
    assert list(me) == [os.getpid()] and me[os.getpid()] > 0


def test_the_new_napi_thread_of_a_link_is_found_by_its_cut_name() -> None:
    before = {10: "napi/c-client-2", 11: "napi/fe0-300"}
    after = {**before, 12: "napi/fe0-301", 13: "napi/be0-302", 14: "napi/p1234567890"}  # cut at 15 characters
    assert thread_of("fe0", before, after) == 12
    assert thread_of("p1234567890ab", before, after) == 14
    with pytest.raises(RuntimeError, match="one new NAPI thread"):
        thread_of("eth1", before, after)


def run(target: str, size: int, rep: int, rate: float, metric: str = "pps", phase: str = "kthread",
        throttled: float = 0.0, machine: float = 1.0, generator: float = 0.5) -> dict[str, Any]:
    amphorae = {f"a{i}": throttled for i in range(size)}
    return {"phase": phase, "target": target, "size": size, "capped": target != "SINGLE-uncapped" and size > 0,
            "metric": metric, "repetition": rep, "rate": rate, "offered": 128 * max(1, size),
            "counts": {"lost": 1, "refused": 0, "answered": int(rate), "exhausted": False},
            "generator_cpu": generator, "machine_busy_cpu": machine, "member_cpu": 0.4, "nic_cpu": 0.2,
            "amphora_kernel_cpu": dict.fromkeys(amphorae, 0.05), "amphora_process_cpu": dict.fromkeys(amphorae, 0.0),
            "network_kernel_cpu": 0.1, "distributor_cpu": 0.0, "throttled": amphorae,
            "processes": {"kthread": 0.3, "other": 0.1, "lab": 1.0}, "wall_s": 3.5,
            "thread_cpu": {f"{a}/{link}": 0.025 + (0.01 if link == "fe0" else 0.0) for a in amphorae
                           for link in ("be0", "fe0")}}


def test_figures_are_medians_with_ratios_to_single_and_direct() -> None:
    runs = []
    for rep, (direct, free, single, aa2) in enumerate([(30e3, 20e3, 5e3, 9e3), (32e3, 22e3, 5.5e3, 10e3),
                                                       (28e3, 18e3, 4.5e3, 9.5e3)]):
        runs += [run("DIRECT", 0, rep, direct, machine=1.9), run("SINGLE-uncapped", 1, rep, free, machine=1.9),
                 run("SINGLE", 1, rep, single, throttled=0.95), run("AA2", 2, rep, aa2, throttled=0.9)]
    runs.append(run("SINGLE", 1, 0, 6e3, phase="inline"))
    summary = summarise(runs, nproc=2, processes=2, kernel_cap=0.05)
    pps = summary["kthread"]["pps"]
    assert pps["SINGLE"]["rate_per_s_median"] == 5e3 and pps["AA2"]["rate_per_s_median"] == 9.5e3
    assert pps["AA2"]["ratio_to_single"] == pytest.approx(1.9) and pps["AA2"]["efficiency"] == pytest.approx(0.95)
    assert pps["AA2"]["ratio_to_single_paired_median"] == pytest.approx(10e3 / 5.5e3)
    assert pps["SINGLE-uncapped"]["ratio_to_direct"] == pytest.approx(20 / 30)
    assert pps["DIRECT"]["ratio_to_single"] is None and pps["DIRECT"]["lost_total"] == 3
    assert pps["AA2"]["link_thread_cpu_median_each"] == pytest.approx({"be0": 0.025, "fe0": 0.035})
    assert pps["SINGLE"]["kernel_cap_used_median"] == pytest.approx(1.0)
    assert pps["AA2"]["busiest_link_share_used_median"] == pytest.approx(0.035 / 0.025)
    assert pps["SINGLE-uncapped"]["kernel_cap_used_median"] is None
    assert pps["DIRECT"]["link_thread_cpu_median_each"] == {}
    assert pps["SINGLE"]["bottleneck"] == "amphora cap" and pps["DIRECT"]["bottleneck"] == "machine"
    assert "flows" in summary["kthread"] and summary["kthread"]["flows"] == {}
    assert summary["inline"]["pps"]["SINGLE"]["ratio_to_single"] == 1.0
    table = markdown(summary)
    assert "| request/response pairs/s | 30,000 | 20,000 | 5,000 | 9,500 |" in table
    assert "1.90 (0.95)" in table


def test_what_limited_a_target() -> None:
    base = {"amphorae": 1, "capped": True, "kernel_cap_used_median": 0.5, "machine_busy_cpu_median": 1.0,
            "generator_cpu_median": 0.5, "nic_cpu_median": 0.3}
    assert bottleneck({**base, "kernel_cap_used_median": 0.9}, 2, 2) == "amphora cap"
    assert bottleneck({**base, "kernel_cap_used_median": 0.8, "busiest_link_share_used_median": 0.97}, 2, 2) == \
        "amphora cap"
    assert bottleneck({**base, "nic_cpu_median": 0.95, "machine_busy_cpu_median": 1.9}, 2, 2) == "NIC thread"
    assert bottleneck({**base, "machine_busy_cpu_median": 1.9}, 2, 2) == "machine"
    assert bottleneck({**base, "generator_cpu_median": 1.9}, 2, 2) == "generator"
    assert bottleneck(base, 2, 2) == "none saturated"
    assert bottleneck({**base, "capped": False, "kernel_cap_used_median": 0.9}, 2, 2) == "none saturated"
    assert bottleneck({**base, "kernel_cap_used_median": None}, 2, 2) == "none saturated"


@pytest.fixture
def loopback_echo() -> Iterator[tuple[str, int]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 50_000))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(2048)
                sock.sendto(data, peer)
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()
    stop.set()
    thread.join(2)
    sock.close()


def test_the_generators_count_answers_in_their_window_only(loopback_echo: tuple[str, int]) -> None:
    start = time.monotonic() + 0.02
    pps = load.pps_worker([loopback_echo], ["127.0.0.1"], 4, 2, b"x" * 16, start, 0.05, 0.2, 0.2, 10**6)
    assert pps.answered > 50 and pps.lost == 0 and pps.refused == 0 and not pps.capped
    assert 0.15 <= pps.counted_s <= 0.35 and pps.cpu_s > 0
    start = time.monotonic() + 0.02
    flows = load.flows_worker([loopback_echo], ["127.0.0.1"], (41000, 41999), 1, 2, 4, b"x", start, 0.0, 0.2, 0.2,
                              10**6)
    assert 10 < flows.answered <= 500 and flows.lost == 0 and flows.bind_failed < 5
    capped = load.pps_worker([loopback_echo], ["127.0.0.1"], 2, 1, b"x", time.monotonic(), 0.0, 5.0, 0.2, 20)
    assert capped.capped and capped.answered >= 20 and capped.counted_s < 5.0
    total = load.merge([pps, flows])
    assert total.answered == pps.answered + flows.answered and total.counted_s == max(pps.counted_s, flows.counted_s)


def test_a_flows_worker_stops_when_its_ports_run_out(loopback_echo: tuple[str, int]) -> None:
    got = load.flows_worker([loopback_echo], ["127.0.0.1"], (42000, 42009), 0, 1, 2, b"x", time.monotonic(), 0.0,
                            2.0, 0.2, 10**6)
    assert got.exhausted and got.answered + got.bind_failed + got.lost == 10 and got.counted_s < 2.0
