"""A property-based fuzz run of every operation of Cohort's OpenAPI description (issue 8).

A real server on noop drivers (``running_cohort``: uvicorn, the response cache and the
reconciler, as ``cohort up`` runs them) is fuzzed by schemathesis from its own
``/openapi.json``, completed with the request bodies and list options the routes parse
themselves (``tests.api_fuzz.openapi_doc``). Every operation gets schema-conforming and
schema-violating requests, as the admin and as a member of another project, aimed at live
objects (``tests.api_fuzz.seeds``). Then:

* no response is a 5xx, and every error is an Octavia fault ``{faultcode, faultstring, debuginfo}``;
* the fuzzer got deep: a good share of requests succeeded, creates among them;
* the database is consistent (SQLite's checks, nothing stuck in PENDING_*, no orphans);
* every collection still lists with a 200.

Each create is also sent once as a client would send it (``tests.api_fuzz.known_good``), before
the generated requests. Bounded: a fixed number of examples per operation and project,
derandomized, no shrinking, and a time budget (``COHORT_FUZZ_BUDGET``, 50 s) past which later
operations get fewer examples; the whole module takes about a minute.
``COHORT_FUZZ_EXAMPLES`` and ``COHORT_FUZZ_BODY_EXAMPLES`` raise the numbers for a longer hunt;
``COHORT_FUZZ_REPORT=<file>`` writes every status and error seen per operation there.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from sqlalchemy import orm
from sqlalchemy.orm import sessionmaker

from cohort.db.session import make_sessionmaker
from cohort.service import Cohort
from tests.api_fuzz import consistency
from tests.api_fuzz.known_good import KNOWN_GOOD, known_good
from tests.api_fuzz.openapi_doc import body_models, enrich, routes_reading_bodies
from tests.api_fuzz.seeds import HEADERS, PROJECTS, Seeds
from tests.support import running_cohort

# Examples per operation and project; operations with a body (where the validators are) get more.
EXAMPLES = int(os.environ.get("COHORT_FUZZ_EXAMPLES", "6"))
BODY_EXAMPLES = int(os.environ.get("COHORT_FUZZ_BODY_EXAMPLES", str(EXAMPLES * 8 // 3)))
# Seconds the generated requests may take: on a slow or busy machine later operations get fewer
# examples (never fewer than MIN_EXAMPLES), so the run stays bounded and still covers them all.
BUDGET = float(os.environ.get("COHORT_FUZZ_BUDGET", "50"))
MIN_EXAMPLES = 2
FAULT_KEYS = {"faultcode", "faultstring", "debuginfo"}
MUTATING = ("POST", "PUT", "DELETE")


class ErrorLog(logging.Handler):
    """Keeps the server's logged tracebacks, so a 500 can be reported with its cause."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


@dataclass
class Run:
    statuses: dict[tuple[str, str], Counter[int]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    not_generated: list[str] = field(default_factory=list)
    faults: dict[str, Counter[str]] = field(default_factory=dict)
    # Operations where a *generated* (not a known-good) request created something.
    generated_creates: set[str] = field(default_factory=set)
    known_good: dict[str, str] = field(default_factory=dict)
    scaled_down: int = 0  # operations that got fewer examples to keep within the budget
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())

    def count(self, predicate: Any, method: str | None = None) -> int:
        return sum(n for (label, _), counter in self.statuses.items() for status, n in counter.items()
                   if predicate(status) and (method is None or label.startswith(method + " ")))


@dataclass
class Fuzzer:
    base: str
    seeds: Seeds
    errors: ErrorLog
    run: Run = field(default_factory=Run)
    http: requests.Session = field(default_factory=requests.Session)
    # A successful change may have deleted a seed (or the quotas that let creates succeed).
    dirty: bool = True

    def exercise(self, case: Any, owner: str, explicit: bool = False) -> None:
        label = f"{case.method.upper()} {case.path}"
        if self.dirty:
            self.seeds.ensure()
            self.dirty = False
        if case.method.upper() in MUTATING:
            # The seed tree may still be PENDING_UPDATE from the previous request: give the
            # reconciler a moment, so that mutations are not all answered with a 409.
            self.seeds.wait_settled(owner, 0.3)
        case.path_parameters = self.seeds.substitute(case.path_parameters)
        case.query = self.seeds.substitute(case.query)
        if case.body is not None and not isinstance(case.body, bytes | bytearray):
            case.body = self.seeds.substitute(case.body)
        logged = len(self.errors.records)
        response = case.call(base_url=self.base, session=self.http, headers=HEADERS[owner], timeout=30)
        status = response.status_code
        self.run.statuses.setdefault((label, owner), Counter())[status] += 1
        problem = self.problem(status, response.content)
        if problem:
            self.run.failures.append({
                "problem": problem, "owner": owner, "method": case.method.upper(), "path": case.formatted_path,
                "query": case.query, "body": _short(case.body), "status": status,
                "response": response.content[:500].decode(errors="replace"),
                "curl": case.as_curl_command(headers=HEADERS[owner]),
                "traceback": "\n".join(self.errors.records[logged:])[-3000:]})
        if explicit:
            self.run.known_good[f"{label} as {owner}"] = f"{status} {response.content[:300].decode(errors='replace')}"
        if status == 201 and not explicit:
            self.run.generated_creates.add(label)
        if 200 <= status < 300 and case.method.upper() in MUTATING:
            self.dirty = True
            if case.path.startswith("/v2/lbaas/quotas"):
                self.seeds.reset_quotas()
        elif 400 <= status < 500:
            seen = self.run.faults.setdefault(label, Counter())
            seen[f"{status} {response.content[:160].decode(errors='replace')}"] += 1

    @staticmethod
    def problem(status: int, content: bytes) -> str | None:
        if status >= 500:
            return f"server error {status}"
        if status < 400:
            return None
        try:
            body = json.loads(content)
        except ValueError:
            return "error body is not JSON"
        if not isinstance(body, dict) or set(body) != FAULT_KEYS:
            return f"error body is not an Octavia fault: keys {sorted(body) if isinstance(body, dict) else body!r}"
        if body["faultcode"] != "Client" or not isinstance(body["faultstring"], str) or not body["faultstring"]:
            return f"bad fault for a {status}: {body!r}"
        return None

    def fuzz(self, schema: Any) -> Run:
        started = time.monotonic()
        operations = [result.ok() for result in schema.get_all_operations()]
        planned = [(BODY_EXAMPLES if operation.body else EXAMPLES) * len(PROJECTS) for operation in operations]
        for index, operation in enumerate(operations):
            label = f"{operation.method.upper()} {operation.path}"
            strategies = [operation.as_strategy(generation_mode=GenerationMode.POSITIVE)]
            try:
                strategies.append(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
            except Exception:  # noqa: BLE001 - nothing to negate (no parameters, no body)
                self.run.not_generated.append(f"{label} (negative)")
            examples = self._scaled(planned[index] // len(PROJECTS), time.monotonic() - started,
                                    sum(planned[index:]))
            for owner in PROJECTS:
                good = known_good(operation.method.upper(), operation.path, owner)
                explicit = None if good is None else operation.Case(
                    path_parameters=good[0], body=good[1], media_type="application/json")
                self._run_examples(st.one_of(strategies), owner, examples, explicit)
        self.run.seconds = time.monotonic() - started
        return self.run

    def _scaled(self, examples: int, elapsed: float, planned_left: int) -> int:
        """``examples``, fewer if the requests planned after this point would overrun the budget."""
        done = self.run.requests
        if done < planned_left / 4:  # too early to project from
            return examples
        projected = elapsed / done * planned_left
        left = max(BUDGET - elapsed, 0.0)
        if projected <= left:
            return examples
        self.run.scaled_down += 1
        return max(MIN_EXAMPLES, int(examples * left / projected))

    def _run_examples(self, strategy: Any, owner: str, examples: int, explicit: Any) -> None:
        def check(case: Any) -> None:
            self.exercise(case, owner, explicit=case is explicit)

        test = given(case=strategy)(check)
        if explicit is not None:
            test = example(case=explicit)(test)
        settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                 phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))(test)()


def _short(body: Any) -> Any:
    text = json.dumps(body, default=str) if not isinstance(body, bytes | bytearray) else repr(body)
    return text if len(text) <= 2000 else text[:2000] + "..."


@dataclass
class Session:
    cohort: Cohort
    base: str
    document: dict[str, Any]
    seeds: Seeds
    run: Run
    readers: sessionmaker[orm.Session]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    state_dir: Path = tmp_path_factory.mktemp("fuzz")
    errors = ErrorLog()
    logging.getLogger("cohort").addHandler(errors)
    try:
        with running_cohort(state_dir, drivers="noop") as (cohort, base):
            document = enrich(httpx.get(base + "/openapi.json", timeout=10).json(), cohort.app)
            schema = schemathesis.openapi.from_dict(document)
            readers = make_sessionmaker(cohort.engine, writer=False)
            seeds = Seeds(base, readers)
            seeds.ensure()
            run = Fuzzer(base, seeds, errors).fuzz(schema)
            if os.environ.get("COHORT_FUZZ_REPORT"):
                Path(os.environ["COHORT_FUZZ_REPORT"]).write_text(json.dumps({
                    "seconds": run.seconds, "requests": run.requests, "failures": run.failures,
                    "statuses": {f"{label} as {owner}": dict(c) for (label, owner), c in run.statuses.items()},
                    "faults": {label: c.most_common(6) for label, c in run.faults.items()},
                    "known_good": run.known_good}, indent=1, default=str))
            try:
                yield Session(cohort, base, document, seeds, run, readers)
            finally:
                seeds.close()
    finally:
        logging.getLogger("cohort").removeHandler(errors)


def test_no_operation_answers_with_a_server_error_or_a_malformed_fault(fuzzed: Session,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = fuzzed.run
    ok = run.count(lambda s: 200 <= s < 300)
    with capsys.disabled():
        print(f"\nOpenAPI fuzz: {run.requests} requests over {len(run.statuses)} (operation, project) pairs "
              f"in {run.seconds:.1f}s; {ok / max(run.requests, 1):.0%} 2xx, "
              f"{run.count(lambda s: s == 201, 'POST')} created ({len(run.generated_creates)} kinds by generated "
              f"requests); {len(run.failures)} failures; {run.scaled_down} operations scaled down to the "
              f"{BUDGET:.0f}s budget")
    assert not run.failures, "\n\n".join(json.dumps(f, indent=1, default=str) for f in run.failures[:20])


def test_every_body_a_route_reads_is_described(fuzzed: Session) -> None:
    """The fuzzer sends real bodies only where the description has them: none may be missing."""
    reading = routes_reading_bodies(fuzzed.cohort.app)
    assert len(reading) > 20
    assert reading == set(body_models(fuzzed.cohort.app))
    for method, path in reading:
        assert "requestBody" in fuzzed.document["paths"][path][method.lower()], (method, path)


def test_every_operation_was_fuzzed_as_both_projects(fuzzed: Session) -> None:
    described = {f"{method.upper()} {path}" for path, ops in fuzzed.document["paths"].items() for method in ops}
    fuzzed_labels = {label for label, _ in fuzzed.run.statuses}
    assert described == fuzzed_labels
    for (label, owner), counter in fuzzed.run.statuses.items():
        assert sum(counter.values()) >= MIN_EXAMPLES, (label, owner, counter)


def test_the_fuzzer_gets_past_validation(fuzzed: Session) -> None:
    """A run that only ever got 400s would prove nothing: creates of every kind must succeed."""
    run = fuzzed.run
    assert run.count(lambda s: 200 <= s < 300) >= run.requests // 5
    created = {label for (label, owner), counter in run.statuses.items() if owner == "admin" and counter[201]}
    assert {f"{method} {path}" for method, path in KNOWN_GOOD} <= created
    tenant = {label for (label, owner), counter in run.statuses.items() if owner == "tenant" and counter[201]}
    assert {f"{method} {path}" for method, path in KNOWN_GOOD if "/lbaas/" in path and "zone" not in path
            and "flavor" not in path} <= tenant
    # Generated requests, not only the known-good ones, reach the database for most kinds.
    assert len(run.generated_creates) >= 6, sorted(run.generated_creates)


def test_the_database_is_consistent_afterwards(fuzzed: Session) -> None:
    sessions = fuzzed.readers
    assert consistency.wait_until_settled(sessions, timeout=30) == []
    assert consistency.orphans(sessions) == []
    assert consistency.sqlite_problems(consistency.sqlite_path(fuzzed.cohort.settings.db_url)) == []


def test_every_collection_still_lists(fuzzed: Session) -> None:
    fuzzed.seeds.ensure()
    for owner in PROJECTS:
        client = fuzzed.seeds.clients[owner]
        for path, ops in fuzzed.document["paths"].items():
            if "get" not in ops or path.endswith("}"):
                continue
            concrete = path.format(pool_id=fuzzed.seeds.value(owner, "pool"),
                                   policy_id=fuzzed.seeds.value(owner, "l7policy"),
                                   lb_id=fuzzed.seeds.value(owner, "loadbalancer"),
                                   listener_id=fuzzed.seeds.value(owner, "listener"),
                                   ident=fuzzed.seeds.value(owner, "amphora"), provider="amphora")
            response = client.get(concrete)
            admin_only = "/v2/octavia/" in path or "profiles" in path
            expected = 403 if owner == "tenant" and admin_only else 200
            assert response.status_code == expected, (owner, concrete, response.status_code, response.text[:300])


def test_the_response_checks_flag_what_they_must() -> None:
    """The checks themselves: a 5xx, a non-JSON error and a non-Octavia error body are failures."""
    fault = json.dumps({"faultcode": "Client", "faultstring": "Invalid input", "debuginfo": None}).encode()
    assert Fuzzer.problem(201, b"{}") is None
    assert Fuzzer.problem(400, fault) is None
    assert Fuzzer.problem(500, fault) == "server error 500"
    assert Fuzzer.problem(404, b"Not Found") == "error body is not JSON"
    assert Fuzzer.problem(422, b'{"detail": []}') is not None
    assert Fuzzer.problem(400, json.dumps({"faultcode": "Server", "faultstring": "x", "debuginfo": None}).encode())
