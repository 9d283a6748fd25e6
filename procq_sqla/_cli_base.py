"""What every `procq` command shares: options that show their environment variable,
one-line errors, loading the app named by --app, and opening it for one command.

Kept apart from the commands so that `cli.py` (worker, defer, migrate, demo) and
`_cli_ops.py` (jobs, healthchecks) both build on it without importing each other.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .database import mask_password
from .exceptions import ConnectorError, ProcqError

if TYPE_CHECKING:
    from .app import App

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_ALREADY_ENQUEUED = 3

MAX_ERROR_LINE = 500

EPILOG = (
    "Exit codes: 0 success; 1 error (or an unhealthy check, or a schema not at head with "
    "`migrate --check`); 2 bad usage; 3 `defer` found a job with the same queueing lock "
    "already waiting. Every option is also read from the environment variable shown "
    "next to it."
)


def option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """click.option that always shows its environment variable in --help."""
    attrs.setdefault("show_envvar", True)
    return click.option(*decls, **attrs)


class Failure(click.ClickException):
    """An error reported as one line on stderr ("Error: ..."), exit code 1."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(mask_password(message))


class UsageFailure(Failure):
    """A request that cannot be right whatever the database holds (exit code 2)."""

    exit_code = EXIT_USAGE


class AlreadyEnqueuedFailure(Failure):
    """`defer` met a waiting job with the same queueing lock (exit code 3)."""

    exit_code = EXIT_ALREADY_ENQUEUED


def describe(exc: BaseException) -> str:
    """One line saying what went wrong, without a password in it."""
    text = str(exc) if isinstance(exc, ProcqError) else f"{type(exc).__name__}: {exc}"
    line = " ".join(text.split()) or type(exc).__name__
    if len(line) > MAX_ERROR_LINE:
        line = line[: MAX_ERROR_LINE - 1] + "…"
    return mask_password(line)


# -- global state and the app --------------------------------------------------------------


class State:
    """What the global options decided, shared with every command."""

    def __init__(self, app_path: str | None, verbose: int, log_format: str) -> None:
        self.app_path = app_path
        self.verbose = verbose
        self.log_format = log_format
        self.log_handler: logging.Handler | None = None
        self._app: App | None = None

    def app(self, *, required: bool = True) -> App | None:
        if self._app is None and self.app_path:
            self._app = load_app(self.app_path)
        if self._app is None and required:
            raise click.UsageError(
                "this command needs an app: pass --app module:app or set PROCQ_APP"
            )
        return self._app


def load_app(path: str) -> App:
    """Import `module:attr` or `module.attr` and check it is a procq_sqla App."""
    from .app import App

    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise Failure(
            f"--app {path!r} is not a dotted path: use module:attribute, e.g. myapp.tasks:app"
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the current folder is importable
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise Failure(
            f"cannot import the app {path!r}: no module named {exc.name!r} "
            "(check --app/PROCQ_APP and that its folder is on PYTHONPATH)"
        ) from exc
    except Exception as exc:
        raise Failure(f"importing the app {path!r} failed: {describe(exc)}") from exc
    try:
        app = functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        raise Failure(
            f"cannot load the app {path!r}: module {module_name!r} has no attribute {attr!r}"
        ) from None
    if not isinstance(app, App):
        raise Failure(f"--app {path!r} is of type {type(app).__name__}, not a procq_sqla.App")
    return app


@contextlib.contextmanager
def opened(app: App) -> Iterator[App]:
    """The app opened for blocking calls for the time of one command."""
    app.open()
    try:
        yield app
    finally:
        app.close()


def database_option(f: F) -> F:
    """--database-url for commands that use the app's database when --app is given."""
    return option(
        "--database-url",
        envvar="PROCQ_DATABASE_URL",
        help="Without --app: the PostgreSQL URL to use (else the PG* variables).",
    )(f)


def direct_app(database_url: str | None) -> App:
    """An app on the named database alone, for commands run without --app."""
    from .app import App
    from .connectors.sync_psycopg import SyncPsycopgConnector
    from .database import database_url as resolve
    from .database import libpq_env_present, normalize_url

    if database_url:
        url = normalize_url(database_url)
    elif os.environ.get("PROCQ_DATABASE_URL") or libpq_env_present():
        url = resolve(start_embedded=False)
    else:
        raise ConnectorError(
            "no database named: pass --app (or PROCQ_APP), or --database-url "
            "(or PROCQ_DATABASE_URL, or the PG* variables)"
        )
    probe_connection(url)
    return App(connector=SyncPsycopgConnector(conninfo=url, timeout=10.0))


def probe_connection(url: str) -> None:
    """Fail at once, in one line, when the database cannot be reached (the pool would
    retry until its timeout)."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=10).close()
    except psycopg.Error as exc:
        where = mask_password(url) if url else "the database of the PG* variables"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConnectorError(f"cannot connect to {where}: {reason}") from exc


def command_app(state: State, database_url: str | None) -> App:
    """The --app if given, else an app on --database-url / PROCQ_DATABASE_URL / PG*."""
    app = state.app(required=False)
    return app if app is not None else direct_app(database_url)


pass_state = click.make_pass_decorator(State)
