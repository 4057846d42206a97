"""API benchmark: latency of the Octavia v2 API under 50 concurrent clients, with 1000 load balancers.

Starts ``cohort up --drivers noop --workers N`` (SQLite in a temporary state directory; N API
processes, by default one per core) as a subprocess on a free loopback port. The 1000 load
balancers (each with a listener and a pool, all ACTIVE) are written into the database before
the server starts: the noop network driver has the lab's address plan, room for about 98
amphorae, so the reconciler could not bring 1000 up, and a reconciler retrying hundreds of
them would disturb what is measured. The reconciler is idle during the reads. With N
concurrent closed-loop clients (each sends its next request when the last one answered) it
measures:

- ``show``: ``GET /v2/lbaas/loadbalancers/{id}`` of random load balancers;
- ``list_page``: ``GET /v2/lbaas/loadbalancers?limit=50&marker=...`` (random markers, so every
  part of the collection is read, not only the first page);
- ``list_full``: ``GET /v2/lbaas/loadbalancers?limit=0``, every load balancer in one answer
  (unpaged), reported separately;
- the same three with a single client, for the latency of one request without queueing;
- ``create``: ``POST /v2/lbaas/loadbalancers`` through the real reconciler (runs of
  ``--creates`` POSTs; after each run they are deleted again so that addresses are free);
- ``create_to_active``: from the POST to the first GET that reads ACTIVE, one load balancer
  at a time, polled every 5 ms.

The GETs are driven by ``wrk`` (in C, so the client's own CPU does not set the latency on a
2-core machine) with a Lua script that picks random ids; without ``wrk`` (or with
``--python-client``), and always for the POSTs, the clients are asyncio tasks with one
``httpx`` connection each. With a closed loop, latency is about clients / throughput (Little's
law): 50 clients at 500 requests/s wait about 100 ms each, however fast one request is alone.

The server runs as shipped, with its response cache for load balancer show and list (answers
kept per process, validated against the database's change counter on every request; see
``cohort.api.response_cache``): nothing changes during the reads, so after each run's warm-up
they are served from it (a ``--warmup`` of 5 s at full load before the first run of each
read lets every worker see every request at least once). Then a second server with the cache off measures ``show`` and
``list_page`` again (``*_nocache``): every request renders from the database, as when load
balancers change all the time.

Each measurement runs ``--repeats`` times; the table and ``bench/results/api.json`` give the
median of the runs' p50/p99 (and every run). Every run is bounded in time (wrk's duration, a
deadline for the Python clients, which also stop after a request count); all traffic goes to
127.0.0.1. The server is stopped by its pid at the end, also
after a failure, and its state directory removed.

    .venv/bin/python -m bench.api            # about four minutes on 2 cores
    .venv/bin/python -m bench.api --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import command_line
from cohort import harness
from cohort.harness import free_port

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
LB = "/v2/lbaas/loadbalancers"
TARGET_P99_MS = 50.0


def preload_database(state: Path, count: int) -> float:
    """``count`` ACTIVE load balancers, each with one listener and one pool, written straight to SQLite."""
    from cohort.db import models as m
    from cohort.db.session import make_engine, make_sessionmaker, upgrade

    started = time.monotonic()
    url = f"sqlite:///{state / 'cohort.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            for n in range(count):
                lb = m.LoadBalancer(
                    project_id="admin", name=f"pre-{n}", description="bench", tags=["bench", str(n % 10)],
                    provisioning_status="ACTIVE", operating_status="OFFLINE", vip_address=f"2001:db8::{n + 1:x}",
                    vip_subnet_id="bench-subnet", vip_network_id="bench-network", vip_port_id=f"bench-port-{n}",
                    listeners=[], pools=[])
                pool = m.Pool(project_id="admin", name=f"pool-{n}", protocol="HTTP", lb_algorithm="ROUND_ROBIN",
                              provisioning_status="ACTIVE", operating_status="OFFLINE", load_balancer=lb)
                m.Listener(project_id="admin", name=f"http-{n}", protocol="HTTP", protocol_port=80,
                           provisioning_status="ACTIVE", operating_status="OFFLINE", load_balancer=lb)
                session.add_all([lb, pool])
            session.commit()
    finally:
        engine.dispose()
    return time.monotonic() - started


@contextmanager
def cohort_server(log_path: Path, preload: int, workers: int = 1,
                  response_cache: bool = True) -> Iterator[tuple[str, float]]:
    """``cohort up --drivers noop`` on a preloaded temporary state dir; yields (base URL, preload seconds)."""
    state = Path(tempfile.mkdtemp(prefix="cohort-bench-api-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        preload_s = preload_database(state, preload)
        port = free_port()
        cohort = Path(sys.executable).parent / "cohort"
        command = [str(cohort), "up", "--drivers", "noop", "--state-dir", str(state), "--port", str(port),
                   "--workers", str(workers)]
        env = {**os.environ, "COHORT_API_RESPONSE_CACHE": "true" if response_cache else "false"}
        with log_path.open("w") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        base = f"http://127.0.0.1:{port}"
        running = proc
        try:
            harness.wait_for_api(base, timeout=30, alive=lambda: running.poll() is None)
        except harness.HarnessError as exc:
            raise RuntimeError(f"{exc}; see {log_path}") from exc
        yield base, preload_s
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(state, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # SIGTERM first: uvicorn shuts down on it, and SIGINT is ignored by a process started in the background.
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGINT, 5), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)


@dataclass
class Run:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    rps: float


@dataclass
class Measurement:
    name: str
    concurrency: int
    runs: list[Run] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return float(statistics.median(getattr(run, attribute) for run in self.runs))

    def summary(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "p50_ms": self.median("p50_ms"), "p90_ms": self.median("p90_ms"),
                "p99_ms": self.median("p99_ms"), "rps": self.median("rps"),
                "errors": sum(run.errors for run in self.runs), "runs": [asdict(run) for run in self.runs]}


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


async def closed_loop(base: str, concurrency: int, total: int, deadline_s: float,
                      request: Callable[[httpx.AsyncClient, int], Awaitable[bool]]) -> Run:
    """``concurrency`` clients, each sending its next request as soon as the last one answered."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    stop_at = time.monotonic() + deadline_s

    async def client() -> None:
        nonlocal issued, errors
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
            while issued < total and time.monotonic() < stop_at:
                number = issued
                issued += 1
                started = time.perf_counter()
                try:
                    ok = await request(http, number)
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - started) * 1000)
                errors += 0 if ok else 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    return Run(requests=len(ordered), errors=errors, seconds=round(seconds, 3),
               p50_ms=round(percentile(ordered, 0.50), 2), p90_ms=round(percentile(ordered, 0.90), 2),
               p99_ms=round(percentile(ordered, 0.99), 2), max_ms=round(ordered[-1], 2) if ordered else 0.0,
               rps=round(len(ordered) / seconds, 1) if seconds else 0.0)


WRK_SCRIPT = """
local ids = {}
for line in io.lines("%(ids)s") do ids[#ids + 1] = line end
math.randomseed(%(seed)d)
local template = "%(template)s"
request = function()
  return wrk.format("GET", (template:gsub("{id}", ids[math.random(#ids)])))
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, ' ..
    '"p99_us": %%d, "max_us": %%d, "errors": %%d}\\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def wrk_run(base: str, template: str, ids_file: Path, concurrency: int, seconds: float, seed: int) -> Run:
    """``wrk`` (C, epoll) as the load generator, so that the client's own CPU does not set the latency.

    Closed loop like the Python clients: ``concurrency`` connections, each sending its next request
    when the last one answered, for ``seconds`` (and a subprocess timeout on top).
    """
    script = ids_file.with_suffix(f".{seed}.lua")
    script.write_text(WRK_SCRIPT % {"ids": ids_file, "seed": seed, "template": template})
    threads = max(1, min(2, concurrency))
    done = subprocess.run(["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "30s",
                           "-s", str(script), base], capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    data = json.loads(line[4:])
    duration = data["duration_us"] / 1e6
    return Run(requests=data["requests"], errors=data["errors"], seconds=round(duration, 3),
               p50_ms=round(data["p50_us"] / 1000, 2), p90_ms=round(data["p90_us"] / 1000, 2),
               p99_ms=round(data["p99_us"] / 1000, 2), max_ms=round(data["max_us"] / 1000, 2),
               rps=round(data["requests"] / duration, 1) if duration else 0.0)


def settle_server(base: str, timeout: float = 120.0) -> None:
    """Wait until the server answers a trivial GET quickly again: requests still queued from a
    previous run (a client that stops does not cancel them) must not count against the next one."""
    deadline = time.monotonic() + timeout
    quick = 0
    with httpx.Client(base_url=base, timeout=timeout) as http:
        while quick < 3 and time.monotonic() < deadline:
            started = time.perf_counter()
            http.get("/v2.0")
            quick = quick + 1 if time.perf_counter() - started < 0.02 else 0
            time.sleep(0.05)


def lb_body(name: str) -> dict[str, Any]:
    return {"loadbalancer": {"name": name, "vip_subnet_id": "public-subnet", "description": "bench",
                             "tags": ["bench", name[-1]]}}


async def wait_all_active(base: str, timeout: float) -> float:
    """Until no load balancer is PENDING_*: the reconciler is idle again."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        while time.monotonic() - started < timeout:
            pending = 0
            for status in ("PENDING_CREATE", "PENDING_UPDATE"):
                body = (await http.get(LB, params={"provisioning_status": status, "limit": 1,
                                                   "fields": "id"})).json()
                pending += len(body["loadbalancers"])
            if not pending:
                return time.monotonic() - started
            await asyncio.sleep(0.25)
    raise RuntimeError(f"load balancers still pending after {timeout} s")


async def delete_all(base: str, ids: list[str]) -> None:
    """Delete load balancers (once the reconciler is done with them) and wait until they are gone."""
    await wait_all_active(base, 600)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for lb_id in ids:
            response = await http.delete(f"{LB}/{lb_id}")
            if response.status_code not in (204, 404):
                raise RuntimeError(f"DELETE {lb_id}: {response.status_code} {response.text}")
        deadline = time.monotonic() + 120
        for lb_id in ids:
            while (await http.get(f"{LB}/{lb_id}")).status_code != 404:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{lb_id} not deleted within 120 s")
                await asyncio.sleep(0.02)


async def create_to_active(base: str, samples: int) -> list[float]:
    seconds: list[float] = []
    made: list[str] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for number in range(samples):
            started = time.perf_counter()
            response = await http.post(LB, json=lb_body(f"cta-{number}"))
            lb_id = response.json()["loadbalancer"]["id"]
            made.append(lb_id)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                body = (await http.get(f"{LB}/{lb_id}", params={"fields": "provisioning_status"})).json()
                if body["loadbalancer"]["provisioning_status"] == "ACTIVE":
                    break
                await asyncio.sleep(0.005)
            else:
                raise RuntimeError(f"{lb_id} not ACTIVE within 30 s")
            seconds.append((time.perf_counter() - started) * 1000)
            if len(made) >= 40:  # keep within the noop network's address plan
                await delete_all(base, made)
                made.clear()
    await delete_all(base, made)
    return seconds


async def benchmark(base: str, args: argparse.Namespace, only: set[str] | None = None,
                    suffix: str = "") -> dict[str, Any]:
    """Every measurement (or those named in ``only``), reported under their name plus ``suffix``."""
    results: dict[str, Any] = {}
    await wait_all_active(base, 60)
    ids = [row["id"] for row in (await _get_json(base, LB, {"limit": 0, "fields": "id"}))["loadbalancers"]]
    if len(ids) < args.lbs:
        raise RuntimeError(f"expected {args.lbs} preloaded load balancers, the API lists {len(ids)}")
    if only is None:
        latencies = sorted(await create_to_active(base, args.active_samples))
        results["create_to_active_ms"] = {"samples": len(latencies),
                                          "median": round(statistics.median(latencies), 1),
                                          "p90": round(percentile(latencies, 0.9), 1), "max": round(latencies[-1], 1)}
    rng = random.Random(7)
    created: list[str] = []
    use_wrk = shutil.which("wrk") is not None and not args.python_client
    results["load_generator"] = "wrk" if use_wrk else "python (httpx.AsyncClient, one task per client)"
    ids_file = Path(tempfile.mkdtemp(prefix="cohort-bench-ids-")) / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")

    async def show(http: httpx.AsyncClient, _: int) -> bool:
        response = await http.get(f"{LB}/{rng.choice(ids)}")
        return response.status_code == 200

    async def page(http: httpx.AsyncClient, _: int) -> bool:
        response = await http.get(LB, params={"limit": 50, "marker": rng.choice(ids)})
        return response.status_code == 200

    async def full(http: httpx.AsyncClient, _: int) -> bool:
        response = await http.get(LB, params={"limit": 0})
        return response.status_code == 200 and len(response.json()["loadbalancers"]) >= len(ids)

    async def create(http: httpx.AsyncClient, number: int) -> bool:
        response = await http.post(LB, json=lb_body(f"post-{number}"))
        if response.status_code == 201:
            created.append(response.json()["loadbalancer"]["id"])
        return response.status_code == 201

    # (name, python request, wrk path template, clients, requests per run for the python client)
    plans: list[tuple[str, Callable[[httpx.AsyncClient, int], Awaitable[bool]], str | None, int, int]] = [
        ("show", show, LB + "/{id}", args.clients, args.requests),
        ("list_page", page, LB + "?limit=50&marker={id}", args.clients, args.requests // 2),
        ("list_full", full, LB + "?limit=0", args.clients, args.full_requests),
        ("show_1client", show, LB + "/{id}", 1, args.requests // 5),
        ("list_page_1client", page, LB + "?limit=50&marker={id}", 1, args.requests // 10),
        ("list_full_1client", full, LB + "?limit=0", 1, max(5, args.full_requests // 5)),
        ("create", create, None, args.clients, args.creates),
    ]
    measurements: dict[str, Measurement] = {}
    try:
        for plain_name, request, template, concurrency, total in plans:
            if only is not None and plain_name not in only:
                continue
            name = plain_name + suffix
            measurement = Measurement(name, concurrency)
            for repeat in range(args.repeats):
                settle_server(base)
                if template is not None and use_wrk:
                    # Unpaged lists take long enough that a short run would not see one round finish.
                    seconds = args.seconds * (3 if plain_name == "list_full" else 1)
                    # Warm-up: opens the connections and, on the first run, fills each worker's cache.
                    warmup = args.warmup if repeat == 0 else 1
                    wrk_run(base, template, ids_file, concurrency, warmup, seed=100 + repeat)
                    settle_server(base)
                    run = wrk_run(base, template, ids_file, concurrency, seconds, seed=repeat)
                else:
                    if plain_name != "create":
                        # A short warm-up so that every connection is open before the clock runs.
                        await closed_loop(base, concurrency, concurrency, 30, request)
                    run = await closed_loop(base, concurrency, total, args.deadline, request)
                measurement.runs.append(run)
                if created:
                    await delete_all(base, created)
                    created.clear()
            measurements[name] = measurement
            summary = measurement.summary()
            print(f"  {name:<18} p50 {summary['p50_ms']:8.1f} ms  p99 {summary['p99_ms']:8.1f} ms  "
                  f"{summary['rps']:7.1f} req/s", flush=True)
    finally:
        shutil.rmtree(ids_file.parent, ignore_errors=True)
    results["measurements"] = {name: m.summary() for name, m in measurements.items()}
    return results


async def _get_json(base: str, path: str, params: dict[str, Any]) -> Any:
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        response = await http.get(path, params=params)
        response.raise_for_status()
        return response.json()


def table(results: dict[str, Any]) -> str:
    rows = [f"load generator: {results['load_generator']}",
            f"{'measurement':<20}{'clients':>8}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'errors':>8}  target"]
    for name, summary in results["measurements"].items():
        target = ""
        if name in ("show", "list_page", "show_nocache", "list_page_nocache"):
            target = "ok" if summary["p99_ms"] < TARGET_P99_MS else f"MISSED (p99 < {TARGET_P99_MS:.0f} ms)"
        rows.append(f"{name:<20}{summary['concurrency']:>8}{summary['p50_ms']:>10.1f}{summary['p99_ms']:>10.1f}"
                    f"{summary['rps']:>10.1f}{summary['errors']:>8}  {target}")
    active = results["create_to_active_ms"]
    rows.append(f"create -> ACTIVE: median {active['median']} ms, p90 {active['p90']} ms "
                f"({active['samples']} load balancers, one at a time)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lbs", type=int, default=1000, help="load balancers to preload")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=3000, help="requests per show run (half for pages)")
    parser.add_argument("--full-requests", type=int, default=100, help="requests per full-list run")
    parser.add_argument("--creates", type=int, default=80,
                        help="POSTs per create run (the noop network has room for about 98 amphorae)")
    parser.add_argument("--active-samples", type=int, default=50, help="load balancers timed to ACTIVE")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds at most per python-client run")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds of wrk load before the first run of each read measurement")
    parser.add_argument("--python-client", action="store_true",
                        help="use the python load generator even when wrk is installed")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="API worker processes")
    parser.add_argument("--no-compare-uncached", dest="compare_uncached", action="store_false",
                        help="skip the show and page runs with the response cache off")
    parser.add_argument("--out", type=Path, default=RESULTS / "api.json")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.lbs, args.requests, args.full_requests, args.creates = 100, 300, 10, 20
        args.active_samples, args.repeats, args.seconds, args.warmup = 5, 1, 3.0, 1.0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_path = Path(tempfile.gettempdir()) / "cohort-bench-api-server.log"  # kept for a look after a failure
    started = time.monotonic()
    print(f"Cohort API benchmark: {args.lbs} load balancers, {args.clients} clients, {args.repeats} runs each",
          flush=True)
    with cohort_server(log_path, args.lbs, args.workers) as (base, preload_s):
        results = asyncio.run(benchmark(base, args))
    if args.compare_uncached:
        print("The same reads with the response cache off (every request renders from the database):", flush=True)
        with cohort_server(log_path, args.lbs, args.workers, response_cache=False) as (base, _):
            uncached = asyncio.run(benchmark(base, args, only={"show", "list_page"}, suffix="_nocache"))
        results["measurements"].update(uncached["measurements"])
    results["preload"] = {"load_balancers": args.lbs, "seconds": round(preload_s, 2),
                          "how": "ACTIVE rows (load balancer + listener + pool) written before the server started"}
    document = {
        "benchmark": "api",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(" ".join([Path(sys.executable).name, "-m", "bench.api"]), argv),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_at_end": list(os.getloadavg())},
        "target_p99_ms": TARGET_P99_MS,
        "seconds": round(time.monotonic() - started, 1),
        **results,
    }
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(table(results))
    print(f"wrote {args.out} in {document['seconds']} s (server log: {log_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
