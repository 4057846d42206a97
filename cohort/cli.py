"""The ``cohort`` command: run the control plane (together or in parts), the lab, and status views."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cohort.config import Settings, load_settings
from cohort.lab.cli import app as lab_app
from cohort.statedir import PRIVATE_UMASK, make_private

app = typer.Typer(help="Cohort: active-active, N+1 load balancing behind the Octavia v2 API.",
                  no_args_is_help=True, add_completion=False)
app.add_typer(lab_app, name="lab", help="The local lab network (namespaces on documentation ranges).")
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML configuration file.")]
DbOpt = Annotated[str | None, typer.Option("--db", help="Database URL (default: SQLite in the state dir).")]
HostOpt = Annotated[str | None, typer.Option("--host", help="API address (default 127.0.0.1).")]
PortOpt = Annotated[int | None, typer.Option("--port", help="API port (default 9876).")]
StateOpt = Annotated[Path | None, typer.Option("--state-dir", help="State directory.")]
DriversOpt = Annotated[str | None, typer.Option("--drivers", help="noop (no root needed) or local.")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="API processes sharing the port (default 1).")]


def _settings(config: Path | None, db: str | None = None, host: str | None = None, port: int | None = None,
              state_dir: Path | None = None, drivers: str | None = None, workers: int | None = None) -> Settings:
    return load_settings(config, database_url=db, api_host=host, api_port=port, state_dir=state_dir,
                         drivers=drivers, api_workers=workers)


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _run(settings: Settings, api: bool, controller: bool) -> None:
    from cohort.service import build, serve

    cohort = build(settings)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(cohort, api=api, controller=controller))


@app.command()
def up(config: ConfigOpt = None, drivers: DriversOpt = None, db: DbOpt = None, host: HostOpt = None,
       port: PortOpt = None, state_dir: StateOpt = None, workers: WorkersOpt = None,
       demo: Annotated[bool, typer.Option(help="Create the demo load balancer once running.")] = False,
       detach: Annotated[bool, typer.Option(help="Run in the background; `cohort down` stops it.")] = False,
       verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run API, reconciler and health manager in one process. Ctrl-C (or `cohort down`) removes what it made."""
    settings = _settings(config, db, host, port, state_dir, drivers, workers)
    _logging(verbose)
    if detach:
        from cohort.demo import run_demo, start_detached

        argv = ["up", "--state-dir", str(settings.state_dir), "--drivers", settings.drivers,
                "--host", settings.api_host, "--port", str(settings.api_port),
                "--workers", str(settings.api_workers)]
        argv += ["--config", str(config)] if config else []
        argv += ["--db", db] if db else []
        start_detached(settings, argv, console)
        if demo:
            run_demo(settings, console)
        return
    if settings.drivers == "local":
        from cohort.harness import lab_for

        with console.status("Building the lab network (namespaces cohort-*)..."):
            lab_for(settings).up()
    console.print(f"[bold green]Cohort[/bold green] API on http://{settings.api_host}:{settings.api_port} "
                  f"(drivers: {settings.drivers}, database: {settings.db_url})")
    if demo:
        from cohort.demo import run_demo_in_background

        run_demo_in_background(settings, console)
    try:
        _run(settings, api=True, controller=True)
    finally:
        if settings.drivers == "local" and not os.environ.get("COHORT_KEEP_ON_EXIT"):
            from cohort.demo import remove_data_plane

            remove_data_plane(settings, console)


@app.command()
def api(config: ConfigOpt = None, db: DbOpt = None, host: HostOpt = None, port: PortOpt = None,
        state_dir: StateOpt = None, drivers: DriversOpt = None, workers: WorkersOpt = None) -> None:
    """Run only the REST API (beside `cohort controller` on a shared database)."""
    settings = _settings(config, db, host, port, state_dir, drivers, workers)
    _logging(False)
    _run(settings, api=True, controller=False)


@app.command()
def controller(config: ConfigOpt = None, db: DbOpt = None, state_dir: StateOpt = None,
               drivers: DriversOpt = None) -> None:
    """Run only the reconciler and health manager (beside `cohort api` on a shared database)."""
    settings = _settings(config, db, state_dir=state_dir, drivers=drivers)
    _logging(False)
    _run(settings, api=False, controller=True)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None, db: DbOpt = None, state_dir: StateOpt = None) -> None:
    """Create or migrate the schema to the latest revision."""
    from cohort.db.session import upgrade

    settings = _settings(config, db, state_dir=state_dir)
    make_private(settings.state_dir)
    upgrade(settings.db_url, secrets_key=settings.secrets_key_file)
    console.print(f"Schema is up to date: {settings.db_url}")


@app.command()
def status(config: ConfigOpt = None, db: DbOpt = None, state_dir: StateOpt = None) -> None:
    """Tables of load balancers, clusters and amphorae, read from the database."""
    from cohort.status_view import render_status

    settings = _settings(config, db, state_dir=state_dir)
    render_status(settings, console)


@app.command()
def down(config: ConfigOpt = None, state_dir: StateOpt = None) -> None:
    """Stop a detached `cohort up` and remove the lab and every amphora it made."""
    from cohort.demo import teardown

    settings = _settings(config, state_dir=state_dir)
    teardown(settings, console)


def main() -> None:
    # Keys, the database and agents' state are created private from the first write on.
    os.umask(PRIVATE_UMASK)
    app()


if __name__ == "__main__":
    main()
