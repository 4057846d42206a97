"""The FastAPI application: routers under both ``/v2`` and ``/v2.0``, fault handlers, request intake, state."""

from __future__ import annotations

from fastapi import FastAPI

from cohort import __version__
from cohort.api.deps import AppState
from cohort.api.errors import install_handlers
from cohort.api.intake import RequestIntake
from cohort.api.routes import (
    admin,
    catalog,
    healthmonitors,
    identity,
    l7,
    listeners,
    loadbalancers,
    members,
    network,
    pools,
    quotas,
    secrets,
    versions,
)

RESOURCE_ROUTERS = (loadbalancers, listeners, pools, members, healthmonitors, l7, quotas, catalog, admin, network)


def create_app(state: AppState) -> FastAPI:
    app = FastAPI(title="Cohort", version=__version__, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.cohort = state
    # Added first, so innermost of the middlewares, but in front of every route and handler: nothing
    # reads a body before the caller is known and its size checked.
    app.add_middleware(RequestIntake, settings=state.settings)
    install_handlers(app)
    app.include_router(versions.router)
    app.include_router(secrets.router)
    app.include_router(identity.router, include_in_schema=False)
    for prefix, in_schema in (("/v2", True), ("/v2.0", False)):
        for module in RESOURCE_ROUTERS:
            app.include_router(module.router, prefix=prefix, include_in_schema=in_schema)
    return app
