"""Load balancer bodies rendered as JSON text by SQLite itself, for the hot reads (show and list).

A tenant or a dashboard polls ``GET /loadbalancers[/{id}]`` far more than anything else. Built
in Python, each body costs three JSON column parses, two datetime parses, a dict of 25 keys and
its JSON encoding: about 0.2 ms per load balancer, most of a page's time. SQLite's
``json_object`` produces the same text from the row inside the query in microseconds, and the
response is then joined from those texts without parsing them again. The listener and pool ids
(one query for the whole page, :func:`child_ids`) are spliced in by Python, so their order is
ours, not an aggregate's.

The body is the same as :func:`cohort.api.views.load_balancer` field for field (a test compares
them on every kind of value); other databases use that Python view.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, literal_column
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

CHILDREN = ("listeners", "pools")


def _text(column: str) -> str:
    return column


def _time(column: str) -> str:
    return f"strftime('%Y-%m-%dT%H:%M:%S', {column})"


def _list(column: str) -> str:
    # SQLAlchemy's JSON type stores Python None as the JSON text 'null'; the view shows [].
    return f"json(coalesce(nullif({column}, 'null'), '[]'))"


def _bool(column: str) -> str:
    return f"json(CASE WHEN {column} IS NULL THEN 'null' WHEN {column} THEN 'true' ELSE 'false' END)"


# (wire name, SQL of its value) in the order of the Python view; the children come after.
FIELDS: tuple[tuple[str, str], ...] = (
    ("id", _text("load_balancer.id")),
    ("name", _text("load_balancer.name")),
    ("project_id", _text("load_balancer.project_id")),
    ("tenant_id", _text("load_balancer.project_id")),
    ("provisioning_status", _text("load_balancer.provisioning_status")),
    ("operating_status", _text("load_balancer.operating_status")),
    ("admin_state_up", _bool("load_balancer.admin_state_up")),
    ("created_at", _time("load_balancer.created_at")),
    ("updated_at", _time("load_balancer.updated_at")),
    ("tags", _list("load_balancer.tags")),
    ("description", _text("load_balancer.description")),
    ("vip_address", _text("load_balancer.vip_address")),
    ("vip_port_id", _text("load_balancer.vip_port_id")),
    ("vip_subnet_id", _text("load_balancer.vip_subnet_id")),
    ("vip_network_id", _text("load_balancer.vip_network_id")),
    ("vip_qos_policy_id", _text("load_balancer.vip_qos_policy_id")),
    ("vip_sg_ids", _list("load_balancer.vip_sg_ids")),
    ("vip_vnic_type", _text("load_balancer.vip_vnic_type")),
    ("additional_vips", _list("load_balancer.additional_vips")),
    ("provider", _text("load_balancer.provider")),
    ("flavor_id", _text("load_balancer.flavor_id")),
    ("availability_zone", _text("load_balancer.availability_zone")),
)
WIRE_NAMES = {name for name, _ in FIELDS} | set(CHILDREN)


def supported(engine: Engine | None) -> bool:
    return engine is not None and engine.dialect.name == "sqlite"


def body_column(fields: Sequence[str] = ()) -> ColumnElement[Any]:
    """``json_object(...)`` of the load balancer's own columns (only ``fields``, if given), labelled ``body``."""
    chosen = [(name, sql) for name, sql in FIELDS if not fields or name in fields]
    args = ", ".join(f"'{name}', {sql}" for name, sql in chosen)
    return literal_column(f"json_object({args})").label("body")


def _refs(ids: list[str]) -> str:
    return json.dumps([{"id": ident} for ident in ids])


def with_children(body: str, listener_ids: list[str], pool_ids: list[str], fields: Sequence[str] = ()) -> str:
    """Append the ``listeners`` and ``pools`` references to a rendered body (unless ``fields`` leaves them out)."""
    extra = [f'"{name}":{_refs(ids)}' for name, ids in zip(CHILDREN, (listener_ids, pool_ids), strict=True)
             if not fields or name in fields]
    if not extra:
        return body
    joined = ",".join(extra)
    return "{" + joined + "}" if body == "{}" else body[:-1] + "," + joined + "}"


def session_engine(session: Session) -> Engine | None:
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else None
