"""Octavia list options for any table: filters, tags filters, sort, keyset pagination and fields.

Pagination is keyset-based (``marker`` is the id of the last row of the page), done in SQL so
a page costs the same with ten or ten thousand rows. A marker must be a row of the collection
as the caller sees it (its project, its parent object): any other id is a 404, so that a
marker tells nothing about other projects' objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    Integer,
    Select,
    and_,
    cast,
    exists,
    false,
    func,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from cohort.api.errors import InvalidInput, NotFound
from cohort.db.base import Base

RESERVED = {"limit", "marker", "page_reverse", "sort", "sort_key", "sort_dir", "fields",
            "tags", "tags-any", "not-tags", "not-tags-any"}


@dataclass(frozen=True)
class ListOptions:
    filters: dict[str, str]
    tags_all: list[str]
    tags_any: list[str]
    not_tags_all: list[str]
    not_tags_any: list[str]
    sort: list[tuple[str, str]]
    limit: int | None
    marker: str | None
    page_reverse: bool
    fields: list[str]
    # The query as sent, so that page links repeat every option but the position.
    items: tuple[tuple[str, str], ...] = ()


def _split(values: Iterable[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def parse_options(items: Sequence[tuple[str, str]], max_limit: int) -> ListOptions:
    multi: dict[str, list[str]] = {}
    for key, value in items:
        multi.setdefault(key, []).append(value)

    def one(key: str) -> str | None:
        return multi[key][-1] if key in multi else None

    limit_text = one("limit")
    # As in Octavia, a list without a limit is one page of at most the maximum (0 means unlimited).
    limit: int | None = max_limit
    if limit_text is not None:
        try:
            limit = int(limit_text)
        except ValueError as exc:
            raise InvalidInput(f"Invalid input for field/attribute limit. Value: '{limit_text}'.") from exc
        if limit < 0:
            raise InvalidInput("Invalid input for field/attribute limit. Value must be >= 0.")
        limit = min(limit, max_limit) if limit else None
    sort: list[tuple[str, str]] = []
    for entry in _split(multi.get("sort", [])):
        key, _, direction = entry.partition(":")
        sort.append((key, direction or "asc"))
    for key, direction in zip(_split(multi.get("sort_key", [])), _split(multi.get("sort_dir", [])) + ["asc"] * 10,
                              strict=False):
        sort.append((key, direction))
    for _, direction in sort:
        if direction not in ("asc", "desc"):
            raise InvalidInput(f"Invalid sort direction '{direction}': use asc or desc.")
    return ListOptions(
        filters={k: v[-1] for k, v in multi.items() if k not in RESERVED},
        tags_all=_split(multi.get("tags", [])),
        tags_any=_split(multi.get("tags-any", [])),
        not_tags_all=_split(multi.get("not-tags", [])),
        not_tags_any=_split(multi.get("not-tags-any", [])),
        sort=sort,
        limit=limit,
        marker=one("marker"),
        page_reverse=(one("page_reverse") or "false").lower() in ("true", "1", "yes"),
        fields=_split(multi.get("fields", [])),
        items=tuple(items),
    )


def _tag_condition(session: Session, column: Any, tag: str) -> ColumnElement[bool]:
    if session.get_bind().dialect.name == "postgresql":
        return cast(column, JSONB).op("?")(tag)
    each = func.json_each(column).table_valued("value")
    return exists(select(1).select_from(each).where(each.c.value == tag))


def _coerce(column: Any, raw: str) -> Any:
    kind = column.type
    if isinstance(kind, Boolean):
        return raw.lower() in ("true", "1", "yes")
    if isinstance(kind, Integer):
        try:
            return int(raw)
        except ValueError as exc:
            raise InvalidInput(f"Invalid filter value for {column.key}: '{raw}'.") from exc
    return raw


def apply_options(
    session: Session,
    query: Select[Any],
    model: type[Base],
    options: ListOptions,
    filter_aliases: dict[str, str] | None = None,
    id_column: str = "id",
    entities: bool = True,
) -> tuple[list[Any], bool, bool]:
    """Run ``query`` with the options; return (rows, has_next, has_previous).

    ``entities``: ``query`` selects ORM objects (the default); else it selects table rows, returned as such.
    """
    columns = model.__table__.columns
    aliases = filter_aliases or {}
    # What the caller may list (project, parent), before the client's own filters narrow it.
    scope = query.whereclause
    for key, raw in options.filters.items():
        name = aliases.get(key, key)
        if name not in columns:
            raise InvalidInput(f"Invalid filter argument: {key}")
        column = getattr(model, name)
        if isinstance(column.type, JSON):
            raise InvalidInput(f"Invalid filter argument: {key}")
        query = query.where(column == _coerce(column, raw))
    if options.tags_all or options.tags_any or options.not_tags_all or options.not_tags_any:
        if "tags" not in columns:
            raise InvalidInput("This resource has no tags to filter on.")
        tags = getattr(model, "tags")  # noqa: B009 - not every model has tags
        if options.tags_all:
            query = query.where(and_(*[_tag_condition(session, tags, t) for t in options.tags_all]))
        if options.tags_any:
            query = query.where(or_(*[_tag_condition(session, tags, t) for t in options.tags_any]))
        if options.not_tags_all:
            query = query.where(~and_(*[_tag_condition(session, tags, t) for t in options.not_tags_all]))
        if options.not_tags_any:
            query = query.where(~or_(*[_tag_condition(session, tags, t) for t in options.not_tags_any]))

    sort = list(options.sort) or ([("created_at", "asc")] if "created_at" in columns else [])
    for key, _ in sort:
        if key not in columns or isinstance(columns[key].type, JSON):
            raise InvalidInput(f"Invalid sort key: {key}")
    if id_column not in [k for k, _ in sort]:
        sort.append((id_column, sort[-1][1] if sort else "asc"))
    # Walking backwards means reading the page in the opposite order, then flipping it.
    effective = [(k, _flip(d) if options.page_reverse else d) for k, d in sort]

    if options.marker is not None:
        table: Any = model.__table__
        marker_query = select(table).where(table.c[id_column] == options.marker)
        if scope is not None:
            marker_query = marker_query.where(scope)
        marker_row = session.execute(marker_query).one_or_none()
        if marker_row is None:
            raise NotFound("Marker", options.marker)
        query = query.where(_after(model, marker_row, effective))
    for key, direction in effective:
        query = query.order_by(*_order(getattr(model, key), direction))
    if options.limit:
        query = query.limit(options.limit + 1)
    rows = _fetch(session, query, entities)
    more = bool(options.limit) and len(rows) > (options.limit or 0)
    rows = rows[: options.limit] if options.limit else rows
    if options.page_reverse:
        rows.reverse()
        return rows, options.marker is not None, more
    return rows, more, options.marker is not None


def _fetch(session: Session, query: Select[Any], entities: bool) -> list[Any]:
    if entities:
        return list(session.scalars(query).unique())
    return list(session.execute(query).all())


def _flip(direction: str) -> str:
    return "desc" if direction == "asc" else "asc"


def _nullable(column: Any) -> bool:
    return bool(column.property.columns[0].nullable)


def _order(column: Any, direction: str) -> list[Any]:
    """ORDER BY terms: NULLs sort after every value ascending (before them descending), on any database.

    SQLite and PostgreSQL disagree on where NULLs go; an explicit ``IS NULL`` key makes the order the
    same on both and exactly reversible, which keyset paging backwards relies on.
    """
    terms = [column.is_(None)] if _nullable(column) else []
    terms.append(column)
    return [term.asc() if direction == "asc" else term.desc() for term in terms]


def _beyond(column: Any, value: Any, direction: str) -> ColumnElement[bool]:
    """Rows whose ``column`` sorts strictly after ``value`` (NULL being the largest value)."""
    condition: ColumnElement[bool]
    if value is None:
        condition = column.is_not(None) if direction == "desc" else false()
    elif direction == "asc":
        condition = or_(column > value, column.is_(None)) if _nullable(column) else column > value
    else:
        condition = column < value
    return condition


def _equal(column: Any, value: Any) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = column.is_(None) if value is None else column == value
    return condition


def _after(model: type[Base], marker: Any, sort: list[tuple[str, str]]) -> ColumnElement[bool]:
    """Rows strictly after ``marker`` in the given order (the classic keyset OR-chain)."""
    clauses = []
    for index, (key, direction) in enumerate(sort):
        equal_prefix = [_equal(getattr(model, k), getattr(marker, k)) for k, _ in sort[:index]]
        beyond = _beyond(getattr(model, key), getattr(marker, key), direction)
        clauses.append(and_(*equal_prefix, beyond) if equal_prefix else beyond)
    return or_(*clauses) if clauses else true()


def page_links(base_url: str, options: ListOptions, rows: Sequence[Any], has_next: bool,
               has_previous: bool, id_of: Callable[[Any], str]) -> list[dict[str, str]]:
    if not rows or not options.limit:
        return []
    links = []
    position = {"limit", "marker", "page_reverse"}
    keep = [(key, value) for key, value in options.items if key not in position]
    keep.append(("limit", str(options.limit)))
    if has_next:
        query = [*keep, ("marker", id_of(rows[-1]))]
        links.append({"href": f"{base_url}?{urlencode(query)}", "rel": "next"})
    if has_previous:
        query = [*keep, ("marker", id_of(rows[0])), ("page_reverse", "True")]
        links.append({"href": f"{base_url}?{urlencode(query)}", "rel": "previous"})
    return links


def select_fields(body: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    if not fields:
        return body
    return {key: value for key, value in body.items() if key in fields}
