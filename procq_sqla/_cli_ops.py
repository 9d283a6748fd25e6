"""`procq jobs ...` and `procq healthchecks`: what operators look at.

Each command is a thin shell around the `JobManager` (the same API application code
uses): it opens the app (or an app on the database URL alone), asks, and renders rich
tables on a terminal or JSON with `--json` for scripts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ._cli_base import (
    EPILOG,
    EXIT_ERROR,
    F,
    Failure,
    State,
    command_app,
    database_option,
    describe,
    direct_app,
    opened,
    option,
    pass_state,
)
from .database import mask_password
from .exceptions import ConnectorError
from .manager import FINISHED_STATUSES, JOB_STATUSES

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .jobs import Job
    from .manager import HealthReport

DEFAULT_STALLED_AFTER = 30.0  # the worker's default stalled_worker_timeout


# -- healthchecks --------------------------------------------------------------------------


@click.command(epilog=EPILOG)
@database_option
@option(
    "--stalled-after",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_STALLED_AFTER,
    show_default=True,
    metavar="SECONDS",
    help="A worker whose last heartbeat is older than this is not alive.",
)
@option(
    "--min-workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Unhealthy when fewer workers are alive.",
)
@option(
    "--max-waiting-age",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Unhealthy when a runnable job has waited longer (default: only report).",
)
@option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="PROCQ_HEALTHCHECKS_JSON",
    help="Print the checks as JSON.",
)
@pass_state
def healthchecks(
    state: State,
    database_url: str | None,
    stalled_after: float,
    min_workers: int,
    max_waiting_age: float | None,
    as_json: bool,
) -> None:
    """Check the database answers, the schema is at head, workers are alive and jobs
    do not wait too long; exit 1 when something is wrong."""
    app = state.app(required=False)
    report: HealthReport | None = None
    try:
        app = app if app is not None else direct_app(database_url)
        with opened(app):
            report = app.job_manager.health(stalled_after=stalled_after)
    except ConnectorError as exc:
        checks = [Check("database", False, describe(exc))]
    else:
        checks = health_checks(report, stalled_after, min_workers, max_waiting_age)
    print_checks(checks, report, as_json)
    if not all(check.ok for check in checks):
        sys.exit(EXIT_ERROR)


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    """One line of `procq healthchecks`."""

    name: str
    ok: bool
    detail: str


def health_checks(
    report: HealthReport, stalled_after: float, min_workers: int, max_waiting_age: float | None
) -> list[Check]:
    checks = [
        Check("database", True, f"PostgreSQL {report.server_version}, database {report.database}")
    ]
    if not report.schema_present:
        checks.append(
            Check(
                "schema",
                False,
                "procq_sqla's tables are missing: run `procq migrate` (or `alembic upgrade head`)",
            )
        )
        return checks
    if report.missing_revisions:
        at = ", ".join(report.current_revisions) or "no recorded revision"
        checks.append(
            Check(
                "schema",
                False,
                f"at {at}, not at head {report.head}: missing "
                f"{', '.join(report.missing_revisions)} (run `procq migrate`)",
            )
        )
    else:
        checks.append(Check("schema", True, f"at head {report.head}"))
    stalled = report.workers_total - report.workers_alive
    detail = f"{report.workers_alive} alive (heartbeat within {stalled_after:g} s)"
    if stalled:
        detail += f", {stalled} stalled"
    if min_workers:
        detail += f"; at least {min_workers} wanted"
    checks.append(Check("workers", report.workers_alive >= min_workers, detail))
    age = report.oldest_waiting_age
    detail = "no job waiting" if age is None else f"oldest runnable job waiting {age:.1f} s"
    too_old = max_waiting_age is not None and age is not None and age > max_waiting_age
    if max_waiting_age is not None:
        detail += f" (limit {max_waiting_age:g} s)"
    checks.append(Check("jobs", not too_old, detail))
    return checks


def print_checks(checks: list[Check], report: HealthReport | None, as_json: bool) -> None:
    if as_json:
        payload = {
            "ok": all(c.ok for c in checks),
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
            "report": None if report is None else dataclasses.asdict(report),
        }
        click.echo(json.dumps(payload, indent=2))
        return
    for check in checks:
        mark = click.style("OK  ", fg="green") if check.ok else click.style("FAIL", fg="red")
        click.echo(f"{mark}  {check.name:<9} {mask_password(check.detail)}")


# -- grants --------------------------------------------------------------------------------


@click.command(epilog=EPILOG)
@option("--role", required=True, help="The PostgreSQL role to grant the privileges to.")
@option(
    "--kind",
    type=click.Choice(["worker", "web"]),
    default="worker",
    show_default=True,
    help="A worker (claims, runs, rescues, periodic) or a web process (defers, manages).",
)
@option("--schema", default="public", show_default=True, help="The schema of procq's tables.")
def grants(role: str, kind: str, schema: str) -> None:
    """Print the GRANTs a least-privileged role needs on procq's tables (needs no app)."""
    from .privileges import grant_script

    click.echo(grant_script(role, kind, schema=schema), nl=False)


# -- jobs ----------------------------------------------------------------------------------

STATUS_STYLES = {
    "todo": "cyan",
    "doing": "yellow",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "aborted": "magenta",
}


@click.group(epilog=EPILOG)
def jobs() -> None:
    """List, inspect, retry, cancel and prune jobs (needs --app, or only a database URL)."""


def json_option(command: str) -> Callable[[F], F]:
    return option(
        "--json",
        "as_json",
        is_flag=True,
        envvar=f"PROCQ_JOBS_{command.upper()}_JSON",
        help="Print JSON instead of a table.",
    )


@jobs.command("list", epilog=EPILOG)
@option("--id", "job_id", type=int, envvar="PROCQ_JOBS_LIST_ID", help="Only the job with this id.")
@option("--queue", help="Only jobs of this queue.")
@option("--task", help="Only jobs of this task name.")
@option("--status", type=click.Choice(JOB_STATUSES), help="Only jobs in this status.")
@option("--lock", help="Only jobs with this lock.")
@option("--queueing-lock", help="Only jobs with this queueing lock.")
@option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=50,
    show_default=True,
    help="Show at most this many jobs (newest first).",
)
@json_option("list")
@database_option
@pass_state
def list_jobs(
    state: State,
    job_id: int | None,
    queue: str | None,
    task: str | None,
    status: str | None,
    lock: str | None,
    queueing_lock: str | None,
    limit: int,
    as_json: bool,
    database_url: str | None,
) -> None:
    """Jobs matching the filters, newest first."""
    app = command_app(state, database_url)
    with opened(app):
        found = app.job_manager.list_jobs(
            id=job_id,
            queue=queue,
            task_name=task,
            status=status,
            lock=lock,
            queueing_lock=queueing_lock,
            limit=limit,
        )
    if as_json:
        click.echo(json.dumps([job_json(job) for job in found], indent=2))
        return
    if not found:
        click.echo("no job matches", err=True)
        return
    table = rich_table("ID", "Queue", "Task", "Status", "Tries", "Created (UTC)", "Args")
    for job in found:
        table.add_row(
            str(job.id),
            job.queue,
            job.task_name,
            styled_status(job.status),
            str(job.attempts),
            when(job.created_at, short=True),
            short_args(job.args),
        )
    console().print(table)


@jobs.command("show", epilog=EPILOG)
@click.argument("job_id", metavar="ID", type=int)
@json_option("show")
@database_option
@pass_state
def show_job(state: State, job_id: int, as_json: bool, database_url: str | None) -> None:
    """Everything about one job: arguments, attempts, timings, last error."""
    app = command_app(state, database_url)
    with opened(app):
        job = app.job_manager.get_job(job_id)
    if as_json:
        click.echo(json.dumps(job_json(job), indent=2))
        return
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    duration = (
        (job.finished_at - job.started_at).total_seconds()
        if (job.finished_at and job.started_at and job.finished_at >= job.started_at)
        else None
    )
    rows: list[tuple[str, str | Text]] = [
        ("id", str(job.id)),
        ("task", job.task_name),
        ("queue", job.queue),
        ("status", styled_status(job.status)),
        ("attempts", str(job.attempts)),
        ("priority", str(job.priority)),
        ("lock", job.lock or "-"),
        ("queueing lock", job.queueing_lock or "-"),
        ("args", json.dumps(job.args, ensure_ascii=False)),
        ("scheduled at", when(job.scheduled_at)),
        ("created at", when(job.created_at)),
        ("started at", when(job.started_at)),
        ("finished at", when(job.finished_at)),
        ("duration", "-" if duration is None else f"{duration:.3f} s"),
        ("worker id", "-" if job.worker_id is None else str(job.worker_id)),
        ("abort requested", "yes" if job.abort_requested else "no"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    out = console()
    out.print(table)
    if job.last_error:
        out.print("[bold]last error[/bold]")
        out.print(job.last_error.rstrip(), markup=False, highlight=False)


@jobs.command("retry", epilog=EPILOG)
@click.argument("job_id", metavar="ID", type=int)
@database_option
@pass_state
def retry_job(state: State, job_id: int, database_url: str | None) -> None:
    """Put a failed, cancelled or aborted job back in its queue, to run now."""
    app = command_app(state, database_url)
    with opened(app):
        manager = app.job_manager
        if not manager.retry(job_id):
            status = manager.get_job(job_id).status
            raise Failure(
                f"job {job_id} is {status}: only failed, cancelled or aborted jobs can be retried"
            )
    click.echo(f"job {job_id} is waiting to run again")


@jobs.command("cancel", epilog=EPILOG)
@click.argument("job_id", metavar="ID", type=int)
@option("--abort", is_flag=True, help="Also abort the job if it is running.")
@database_option
@pass_state
def cancel_job(state: State, job_id: int, abort: bool, database_url: str | None) -> None:
    """Cancel a waiting job (with --abort, ask the worker to abort a running one)."""
    app = command_app(state, database_url)
    with opened(app):
        manager = app.job_manager
        if manager.cancel(job_id):
            click.echo(f"job {job_id} cancelled")
            return
        if abort and manager.abort(job_id):
            click.echo(f"job {job_id} is running: its worker was asked to abort it")
            return
        status = manager.get_job(job_id).status
    hint = "; pass --abort to abort a running job" if status == "doing" and not abort else ""
    raise Failure(f"job {job_id} is {status}: only waiting jobs can be cancelled{hint}")


@jobs.command("queues", epilog=EPILOG)
@json_option("queues")
@database_option
@pass_state
def queues(state: State, as_json: bool, database_url: str | None) -> None:
    """Job counts per queue and status, and each queue's oldest waiting job."""
    app = command_app(state, database_url)
    with opened(app):
        stats = app.job_manager.queue_stats()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {"queue": q.queue, **q.counts, "oldest_waiting_age": q.oldest_waiting_age}
                    for q in stats
                ],
                indent=2,
            )
        )
        return
    if not stats:
        click.echo("no jobs", err=True)
        return
    table = rich_table("Queue", *JOB_STATUSES, "Oldest wait")
    for q in stats:
        age = "-" if q.oldest_waiting_age is None else f"{q.oldest_waiting_age:.1f} s"
        table.add_row(q.queue, *(str(q.counts[s]) for s in JOB_STATUSES), age)
    console().print(table)


@jobs.command("prune", epilog=EPILOG)
@option(
    "--older-than",
    type=click.FloatRange(min=0),
    required=True,
    metavar="HOURS",
    help="Delete jobs that finished more than this many hours ago.",
)
@option(
    "--status",
    "statuses",
    envvar="PROCQ_JOBS_PRUNE_STATUS",
    type=click.Choice(FINISHED_STATUSES),
    multiple=True,
    help="Only jobs in this status (repeatable; default: every finished status).",
)
@database_option
@pass_state
def prune(
    state: State, older_than: float, statuses: tuple[str, ...], database_url: str | None
) -> None:
    """Delete finished jobs, in bounded batches; prints how many went."""
    app = command_app(state, database_url)
    with opened(app):
        deleted = app.job_manager.prune(older_than * 3600, statuses=statuses or FINISHED_STATUSES)
    which = f" {'/'.join(statuses)}" if statuses else ""
    click.echo(f"deleted {deleted}{which} job(s) finished more than {older_than:g} h ago")


def job_json(job: Job) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in job.as_dict().items()}


def when(value: dt.datetime | None, *, short: bool = False) -> str:
    """A UTC timestamp to the second (without the year in tables)."""
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%m-%d %H:%M:%S" if short else "%Y-%m-%d %H:%M:%S")


def short_args(args: dict[str, Any], limit: int = 30) -> str:
    text = json.dumps(args, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def styled_status(status: str) -> Text:
    from rich.text import Text

    return Text(status, style=STATUS_STYLES.get(status, ""))


def rich_table(*columns: str) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in columns:
        if name in ("Task", "Queue"):  # fold long names, never cut them
            table.add_column(name, overflow="fold", min_width=len(name) + 1)
        elif name == "Args":  # a preview that takes what room is left
            table.add_column(name, overflow="fold", min_width=12)
        else:
            table.add_column(name, no_wrap=True)
    return table


def console() -> Console:
    """A rich console; piped output gets a wide fixed width so rows are never folded."""
    from rich.console import Console

    piped = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    return Console(width=200 if piped else None)
