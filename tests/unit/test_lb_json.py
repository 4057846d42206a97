"""The load balancer bodies SQLite renders (the hot reads) equal the Python view, value for value."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from cohort.api import lb_json, views
from cohort.api.routes.loadbalancers import LB_TABLE, _rendered_select, child_ids, rendered_bodies
from cohort.db import models as m
from cohort.db.session import make_engine, make_sessionmaker, upgrade

SAME_TIME = datetime(2026, 1, 2, 3, 4, 5, 678901)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'cohort.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def add_lbs(session: Session) -> None:
    odd = m.LoadBalancer(project_id="p1", name='quote " and \\ back\nslash é', description=None, tags=None,
                         admin_state_up=False, vip_address="2001:db8::5", vip_sg_ids=["sg-1", "sg-2"],
                         additional_vips=[{"subnet_id": "s", "ip_address": "203.0.113.9"}],
                         provisioning_status="ERROR", operating_status="ERROR", flavor_id=None,
                         availability_zone="az-1", created_at=SAME_TIME, updated_at=SAME_TIME)
    plain = m.LoadBalancer(project_id="p2", name=None, description="", tags=["a", "ü"], admin_state_up=True,
                           provisioning_status="ACTIVE", operating_status="ONLINE", vip_sg_ids=[],
                           additional_vips=[])
    session.add_all([odd, plain])
    session.flush()
    for n in range(3):  # equal creation times: the id breaks the tie, as in the Python view's query
        session.add(m.Listener(project_id="p1", load_balancer=odd, protocol="HTTP", protocol_port=80 + n,
                               provisioning_status="ACTIVE", operating_status="ONLINE", created_at=SAME_TIME))
        session.add(m.Pool(project_id="p1", load_balancer=odd, protocol="HTTP", lb_algorithm="ROUND_ROBIN",
                           provisioning_status="ACTIVE", operating_status="ONLINE", created_at=SAME_TIME))
    session.commit()


def python_views(session: Session) -> dict[str, dict[str, object]]:
    rows = list(session.execute(select(LB_TABLE)).all())
    children = child_ids(session, [row.id for row in rows])
    return {row.id: views.load_balancer(row, *children[row.id]) for row in rows}


@pytest.mark.parametrize("fields", [[], ["id", "tags", "listeners"], ["pools"], ["created_at", "name"], ["nothing"]])
def test_rendered_bodies_equal_the_python_view(engine: Engine, fields: list[str]) -> None:
    assert lb_json.supported(engine)
    with make_sessionmaker(engine)() as session:
        add_lbs(session)
        expected = python_views(session)
        rows = list(session.execute(_rendered_select(fields)).all())
        rendered = [json.loads(body) for body in rendered_bodies(session, rows, fields)]
    assert len(rendered) == 2
    for body in rendered:
        view = expected[body["id"]] if "id" in body else next(iter(expected.values()))
        wanted = {key: value for key, value in view.items() if not fields or key in fields}
        if "id" in body or not fields:
            assert body == wanted
        else:
            assert set(body) == set(wanted)
    if not fields:
        odd = next(b for b in rendered if b["project_id"] == "p1")
        assert odd["admin_state_up"] is False and odd["tags"] == [] and odd["updated_at"] == "2026-01-02T03:04:05"
        assert len(odd["listeners"]) == 3 and len(odd["pools"]) == 3


def test_every_field_of_the_view_is_rendered(engine: Engine) -> None:
    with make_sessionmaker(engine)() as session:
        add_lbs(session)
        view = next(iter(python_views(session).values()))
    assert set(view) == lb_json.WIRE_NAMES
