"""The one list endpoint body every collection shares (scoping, options, links, fields)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from cohort.api.auth import RequestContext
from cohort.api.listing import ListOptions, apply_options, page_links, parse_options, select_fields
from cohort.db.base import Base


def page_of(
    request: Request,
    session: Session,
    ctx: RequestContext,
    model: type[Base],
    query: Select[Any],
    options: ListOptions,
    aliases: dict[str, str] | None = None,
    scoped: bool = True,
    id_column: str = "id",
    entities: bool = True,
) -> tuple[list[Any], list[dict[str, str]]]:
    """The rows of one page of ``query`` as the caller may see them, and the page's links."""
    if scoped and not ctx.is_admin:
        query = query.where(model.project_id == ctx.project_id)  # type: ignore[attr-defined]
    rows, has_next, has_previous = apply_options(session, query, model, options, aliases, id_column, entities)
    base_url = str(request.url).split("?", 1)[0]
    links = page_links(base_url, options, rows, has_next, has_previous, lambda row: getattr(row, id_column))
    return rows, links


def list_collection(
    request: Request,
    session: Session,
    ctx: RequestContext,
    model: type[Base],
    collection: str,
    view: Callable[[Any], dict[str, Any]] | None,
    query: Select[Any] | None = None,
    aliases: dict[str, str] | None = None,
    scoped: bool = True,
    max_limit: int = 1000,
    id_column: str = "id",
    batch_view: Callable[[list[Any]], list[dict[str, Any]]] | None = None,
    entities: bool = True,
) -> dict[str, Any]:
    """One page of ``model``; ``batch_view`` (rows to bodies at once) saves per-row queries over ``view``."""
    options = parse_options(list(request.query_params.multi_items()), max_limit)
    query = query if query is not None else select(model)
    rows, links = page_of(request, session, ctx, model, query, options, aliases, scoped, id_column, entities)
    if batch_view is not None:
        bodies = batch_view(rows)
    else:
        assert view is not None
        bodies = [view(row) for row in rows]
    return {
        collection: [select_fields(body, options.fields) for body in bodies],
        f"{collection}_links": links,
    }
