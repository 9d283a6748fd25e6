"""The `procq` command line (also `python -m procq_sqla`): worker, defer, jobs,
healthchecks, migrate, demo.

Every option can also come from the environment: `PROCQ_<COMMAND>_<OPTION>` (e.g.
`PROCQ_WORKER_CONCURRENCY`, `PROCQ_JOBS_LIST_LIMIT`), with `PROCQ_APP`,
`PROCQ_DATABASE_URL`, `PROCQ_VERBOSE` and `PROCQ_LOG_FORMAT` for the global ones;
`--help` shows each variable. Errors print one line (a traceback only with -v) and exit
non-zero; the exit codes are listed in `procq --help`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import inspect
import json
import logging
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from ._cli_base import (
    EPILOG,
    AlreadyEnqueuedFailure,
    F,
    Failure,
    State,
    UsageFailure,
    command_app,
    database_option,
    describe,
    opened,
    option,
    pass_state,
)
from ._cli_ops import grants, healthchecks, jobs
from .database import mask_password
from .exceptions import AlreadyEnqueued, InvalidOption
from .logs import LOG_FORMATS, configure_logging

if TYPE_CHECKING:
    from .app import App
    from .jobs import JobOptions


class ProcqGroup(click.Group):
    """Turns any exception below it into one clear line (a traceback only with -v)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            state = ctx.find_object(State)
            if state is not None and state.verbose:
                traceback.print_exc()
            if isinstance(exc, InvalidOption):
                raise UsageFailure(describe(exc)) from exc
            raise Failure(describe(exc)) from exc


# -- the group -----------------------------------------------------------------------------


@click.group(
    cls=ProcqGroup,
    epilog=EPILOG,
    context_settings={"auto_envvar_prefix": "PROCQ", "help_option_names": ["-h", "--help"]},
)
@option(
    "-a",
    "--app",
    "app_path",
    envvar="PROCQ_APP",
    metavar="MODULE:APP",
    help="The procq_sqla.App to use, as module:attribute or module.attribute.",
)
@option(
    "-v",
    "--verbose",
    count=True,
    envvar="PROCQ_VERBOSE",
    help="More logs (-v: procq_sqla at DEBUG and tracebacks on errors; -vv: everything).",
)
@option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    envvar="PROCQ_LOG_FORMAT",
    help="Logs as text lines or one JSON object per line.",
)
@click.version_option(__version__, "--version", prog_name="procq")
@click.pass_context
def cli(ctx: click.Context, app_path: str | None, verbose: int, log_format: str) -> None:
    """procq: run and inspect procq_sqla task queues on PostgreSQL."""
    ctx.obj = State(app_path, verbose, log_format)
    ctx.obj.log_handler = configure_logging(verbosity=verbose, log_format=log_format)


# -- worker --------------------------------------------------------------------------------


def _worker_defaults() -> dict[str, Any]:
    from .worker import Worker

    params = inspect.signature(Worker.__init__).parameters
    return {
        name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty
    }


_WD = _worker_defaults()


def _interval(flag: str, help: str) -> Callable[[F], F]:
    """A worker option in seconds (> 0), defaulting to the Worker's own default."""
    key = flag.lstrip("-").replace("-", "_")
    return option(
        flag,
        type=click.FloatRange(min=0, min_open=True),
        default=_WD[key],
        show_default=True,
        metavar="SECONDS",
        help=help,
    )


@cli.command(epilog=EPILOG)
@option(
    "-q",
    "--queues",
    metavar="Q1,Q2",
    help="Comma-separated queues to take jobs from (default: every queue).",
)
@option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=_WD["concurrency"],
    show_default=True,
    help="Jobs run at the same time.",
)
@option(
    "--wait/--one-shot",
    default=_WD["wait"],
    show_default=True,
    help="Keep waiting for new jobs, or stop once the queues are empty.",
)
@option(
    "--listen-notify/--no-listen-notify",
    default=_WD["listen_notify"],
    show_default=True,
    help="Wake up on PostgreSQL NOTIFY when jobs are deferred (else only poll).",
)
@_interval("--fetch-job-polling-interval", "How often to look for jobs when no NOTIFY arrives.")
@_interval("--abort-job-polling-interval", "How often to look for abort requests of running jobs.")
@option(
    "--shutdown-graceful-timeout",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="On stop, wait this long for running jobs, then cancel them (default: wait for them).",
)
@option(
    "--delete-jobs",
    type=click.Choice(["never", "successful", "always"]),
    default=_WD["delete_jobs"],
    show_default=True,
    help="Delete jobs once they finish.",
)
@option(
    "--claim-ahead/--no-claim-ahead",
    default=_WD["claim_ahead"],
    show_default=True,
    help="While jobs are short, claim up to 20 ms of work beyond the free slots.",
)
@option(
    "-n", "--name", default=None, help="Worker name in logs and procq_workers (default: host:pid)."
)
@_interval("--heartbeat-interval", "How often the worker records that it is alive.")
@_interval(
    "--stalled-worker-timeout", "A worker silent this long is dead: its running jobs are rescued."
)
@pass_state
def worker(state: State, /, queues: str | None, **options: Any) -> None:
    """Run a worker: take jobs from the queues and run their tasks."""
    app = state.app()
    assert app is not None
    names = [q.strip() for q in (queues or "").split(",") if q.strip()]
    app.run_worker(queues=names or None, **options)


# -- migrate -------------------------------------------------------------------------------


@cli.command(epilog=EPILOG)
@option(
    "--database-url",
    envvar="PROCQ_DATABASE_URL",
    help="PostgreSQL URL (default: the PG* variables, else a throwaway embedded server).",
)
@option(
    "--sql",
    "print_sql",
    is_flag=True,
    envvar="PROCQ_MIGRATE_SQL",
    help="Print the DDL instead of running it.",
)
@option("--check", is_flag=True, help="Only check: exit 1 when the schema is not at the revision.")
@option("--revision", default="head", show_default=True, help="Target Alembic revision.")
def migrate(database_url: str | None, print_sql: bool, check: bool, revision: str) -> None:
    """Create or upgrade procq_sqla's schema with its Alembic revisions (needs no app)."""
    from . import migrations

    if print_sql:
        click.echo(migrations.upgrade_sql(revision), nl=False)
        return
    url = _migration_url(database_url)
    where = mask_password(url) if url else "the database of the PG* variables"
    if check:
        missing = _missing_revisions(url, revision)
        if missing:
            raise Failure(
                f"the schema on {where} is not at {revision}: missing {', '.join(missing)} "
                "(run `procq migrate`)"
            )
        click.echo(f"the schema on {where} is at {revision}")
        return
    from .database import sqlalchemy_url

    migrations.upgrade(sqlalchemy_url(url), revision)
    click.echo(f"the schema on {where} is at {revision}")


def _migration_url(database_url: str | None) -> str:
    from .database import database_url as resolve
    from .database import libpq_env_present, normalize_url

    if database_url:
        return normalize_url(database_url)
    if not libpq_env_present():
        click.echo(
            "no database named (--database-url, PROCQ_DATABASE_URL or PG* variables): "
            "using a throwaway embedded PostgreSQL",
            err=True,
        )
    return resolve()


def _missing_revisions(url: str, revision: str) -> list[str]:
    from sqlalchemy import create_engine, pool

    from . import migrations
    from .database import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            missing = migrations.missing_revisions(connection)
    finally:
        engine.dispose()
    if revision != "head":  # missing runs from head down: keep what lies below revision
        missing = missing[missing.index(revision) :] if revision in missing else []
    return missing[::-1]


# -- demo ----------------------------------------------------------------------------------


@cli.command(epilog=EPILOG)
@option(
    "--database-url",
    envvar="PROCQ_DATABASE_URL",
    help="PostgreSQL URL (default: the PG* variables, else an embedded server).",
)
@pass_state
def demo(state: State, /, database_url: str | None) -> None:
    """The guided tour: migrate, defer jobs in a session, run a worker, show the jobs."""
    from .demo import main as demo_main

    if not state.verbose and state.log_handler is not None:
        state.log_handler.setLevel(logging.WARNING)  # the demo shows its own progress
    sys.exit(demo_main(database_url))


# -- defer ---------------------------------------------------------------------------------


def parse_json_args(text: str | None) -> dict[str, Any]:
    """The job's keyword arguments from the JSON command-line argument."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"not valid JSON ({exc.msg} at column {exc.colno})", param_hint="JSON"
        ) from None
    if not isinstance(value, dict):
        raise click.BadParameter(
            f"must be a JSON object of keyword arguments like '{{\"a\": 1}}', not a "
            f"{type(value).__name__}",
            param_hint="JSON",
        )
    return value


def parse_at(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an ISO 8601 date and time", param_hint="--at"
        ) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise click.BadParameter(
            f"{text!r} has no timezone: add one, e.g. {text}+00:00", param_hint="--at"
        )
    return when


def unknown_task_message(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        hint = f"did you mean {', '.join(repr(c) for c in close)}?"
    elif known:
        shown = sorted(known)[:10]
        more = f" (and {len(known) - 10} more)" if len(known) > 10 else ""
        hint = f"known tasks: {', '.join(shown)}{more}."
    else:
        hint = "the app has no tasks."
    return f"unknown task {name!r}: {hint} Pass --unknown to defer it anyway"


@cli.command(epilog=EPILOG)
@click.argument("task")
@click.argument("json_args", metavar="[JSON]", required=False)
@option("--queue", help="Queue of the job (default: the task's).")
@option("--priority", type=int, help="Higher runs first (default: the task's).")
@option("--lock", help="Jobs sharing a lock run one at a time, in order.")
@option("--queueing-lock", help="At most one waiting job per queueing lock.")
@option(
    "--at",
    "at",
    metavar="DATETIME",
    help="Run no earlier than this ISO 8601 time, "
    "with a timezone (e.g. 2030-01-01T09:00:00+00:00).",
)
@option(
    "--in",
    "in_",
    envvar="PROCQ_DEFER_IN",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Run no earlier than this many seconds from now.",
)
@option(
    "--ignore-already-enqueued",
    is_flag=True,
    help="A job with the same queueing lock already waiting is not an error (exit 0).",
)
@option(
    "--unknown",
    is_flag=True,
    help="Defer even if the app has no such task (another app's worker may know it).",
)
@database_option
@pass_state
def defer(
    state: State,
    task: str,
    json_args: str | None,
    queue: str | None,
    priority: int | None,
    lock: str | None,
    queueing_lock: str | None,
    at: str | None,
    in_: float | None,
    ignore_already_enqueued: bool,
    unknown: bool,
    database_url: str | None,
) -> None:
    """Defer a job of TASK with JSON keyword arguments; prints the job's id.

    \b
    Example:
      procq --app myapp:app defer send_email '{"to": "a@example.org"}' --in 60
    """
    kwargs = parse_json_args(json_args)
    if at is not None and in_ is not None:
        raise click.UsageError("give --at or --in, not both")
    schedule_at = parse_at(at)
    if in_ is not None:
        schedule_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=in_)
    app = command_app(state, database_url)
    if task not in app.tasks and not unknown:
        if state.app_path is None:
            raise UsageFailure(
                f"no --app given, so task {task!r} is unknown: pass --app module:app "
                "(or --unknown to defer it anyway)"
            )
        raise UsageFailure(unknown_task_message(task, list(app.tasks)))
    changes = {
        "queue": queue,
        "priority": priority,
        "lock": lock,
        "queueing_lock": queueing_lock,
        "scheduled_at": schedule_at,
    }
    options = _options(app, task, {k: v for k, v in changes.items() if v is not None})
    with opened(app):
        try:
            job_id = _defer(app, task, kwargs, options)
        except AlreadyEnqueued:
            message = (
                f"a job with queueing lock {options.queueing_lock!r} is already waiting; "
                "nothing was deferred"
            )
            if ignore_already_enqueued:
                click.echo(message, err=True)
                return
            raise AlreadyEnqueuedFailure(
                message + " (use --ignore-already-enqueued to accept this)"
            ) from None
    click.echo(job_id)


def _options(app: App, task_name: str, changes: dict[str, Any]) -> JobOptions:
    """The task's default options (or the defaults, for an unknown task) with changes."""
    from .jobs import JobOptions

    task = app.tasks.get(task_name)
    base = task.options if task is not None else JobOptions()
    return base.replace(**changes).validated()


def _defer(app: App, task_name: str, kwargs: dict[str, Any], options: JobOptions) -> int:
    from .jobs import serialize_args

    args_json = serialize_args(kwargs, app.json_dumps)
    return app.job_manager.defer(task_name, options, args_json)


cli.add_command(jobs)
cli.add_command(healthchecks)
cli.add_command(grants)


def main() -> None:
    """Entry point of the `procq` script and of `python -m procq_sqla`."""
    cli(prog_name="procq")
