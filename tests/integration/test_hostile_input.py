"""Hostile input, generated with hypothesis: job arguments, queue / lock / task names, CLI
arguments and DSNs either round-trip through PostgreSQL exactly or get a clear
procq_sqla error before anything is written; and no SQL is ever built from input by
string formatting (a scan of the package's source).

Limits (procq_sqla.jobs): names (task, queue) at most MAX_NAME_LENGTH = 255 characters,
locks and queueing locks at most MAX_LOCK_LENGTH = 1024, arguments at most
MAX_ARGS_BYTES = 64 MiB of UTF-8 JSON; no NUL character and no lone surrogate anywhere.
"""

from __future__ import annotations

import ast
import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from polling import count_jobs

import procq_sqla
from procq_sqla import App, ConnectorError, JobArgumentsError, SyncPsycopgConnector
from procq_sqla.cli import cli
from procq_sqla.exceptions import InvalidOption
from procq_sqla.jobs import MAX_ARGS_BYTES, MAX_LOCK_LENGTH, MAX_NAME_LENGTH, serialize_args
from procq_sqla.sql import load_queries

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- strategies ------------------------------------------------------------------------------

# Text PostgreSQL can store: any Unicode scalar value but NUL (no lone surrogates).
storable_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"))
HOSTILE_FRAGMENTS = [
    "'",
    '"',
    "\\",
    "'; DROP TABLE procq_jobs; --",
    '"); DELETE FROM procq_jobs; --',
    "%(queue)s",
    "%s",
    "{}",
    "$1",
    "$$",
    "E'\\x00'",
    "\\u0000",
    "\\ud800",
    "Robert'); --",
    "ünïcødé ✓ 😀 \U0001d518",
    "\u202e\u200b\ufeff",
    "procq_jobs",
]
hostile_text = st.lists(
    st.sampled_from(HOSTILE_FRAGMENTS) | storable_text, min_size=1, max_size=4
).map("".join)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    # jsonb keeps numbers as numeric: a float with a large exponent comes back as an int
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15)
    | hostile_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(hostile_text, children, max_size=4)
    ),
    max_leaves=25,
)
json_args = st.dictionaries(hostile_text, json_values, max_size=5)


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


NOT_JSON: dict[str, Callable[[], Any]] = {
    "set": lambda: {1, 2},
    "bytes": lambda: b"\x00\xff",
    "object": object,
    "complex": lambda: 1j,
    "datetime": lambda: dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    "decimal": lambda: decimal.Decimal("1.5"),
    "nan": lambda: math.nan,
    "infinity": lambda: -math.inf,
    "NUL": lambda: "a\x00b",
    "lone high surrogate": lambda: "x\ud800y",
    "lone low surrogate": lambda: "\udcff",
    "surrogate in a key": lambda: {"k\udc80": 1},
    "NUL in a key": lambda: {"k\x00": 1},
    "tuple key": lambda: {(1, 2): 3},
    "huge int": lambda: 10**5000,
    "too deep": lambda: nested(100_000),
}
WRAPPERS: list[Callable[[Any], Any]] = [
    lambda v: v,
    lambda v: [v],
    lambda v: {"inner": v},
    lambda v: [1, {"a": [None, v]}, "z"],
]


@pytest.fixture
def app(sync_app: App) -> App:
    @sync_app.task(name="target")
    def target(**kwargs: Any) -> None: ...

    return sync_app


# -- job arguments ---------------------------------------------------------------------------


@SETTINGS
@given(args=json_args)
def test_json_arguments_round_trip_exactly(app: App, db: Any, args: dict[str, Any]) -> None:
    job_id = app.get_task("target").defer(**args)
    stored = db.execute("SELECT args FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert stored["args"] == args
    assert app.job_manager.get_job(job_id).args == args


@SETTINGS
@given(
    kind=st.sampled_from(sorted(NOT_JSON)),
    wrap=st.sampled_from(WRAPPERS),
    key=hostile_text,
    good=json_args,
)
def test_arguments_that_cannot_be_stored_are_refused_before_any_io(
    app: App, db: Any, kind: str, wrap: Callable[[Any], Any], key: str, good: dict[str, Any]
) -> None:
    before = count_jobs(db)
    args = {**good, key: wrap(NOT_JSON[kind]())}
    with pytest.raises(JobArgumentsError) as raised:
        app.get_task("target").defer(**args)
    message = str(raised.value)
    assert "\n" not in message and len(message) < 600
    with pytest.raises(JobArgumentsError):  # a batch with one bad job writes none
        app.get_task("target").batch_defer(good, args, good)
    assert count_jobs(db) == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({"a": math.nan}, "argument 'a' cannot be stored as JSON"),
        ({"a": "\ud800"}, "lone surrogate"),
        ({"a": "x\x00"}, "NUL character"),
        ({"a": nested(100_000)}, "argument 'a' cannot be stored as JSON"),
        ({"a": "x" * MAX_ARGS_BYTES}, f"the limit is {MAX_ARGS_BYTES}"),
        ({"a": "é" * (MAX_ARGS_BYTES // 2)}, "bytes of JSON"),  # bytes, not characters
    ],
    ids=["nan", "surrogate", "nul", "deep", "huge", "huge-in-bytes"],
)
def test_bad_arguments_get_a_message_naming_the_problem(
    app: App, db: Any, args: dict[str, Any], needle: str
) -> None:
    with pytest.raises(JobArgumentsError, match=re.escape(needle)):
        app.get_task("target").defer(**args)
    assert count_jobs(db) == 0


def test_big_and_deep_arguments_within_the_limits_round_trip(app: App, db: Any) -> None:
    big = {"blob": "é😀" * 500_000, "deep": nested(500), "many": list(range(50_000))}
    job_id = app.get_task("target").defer(**big)
    assert app.job_manager.get_job(job_id).args == big


def test_text_that_only_looks_like_nul_or_surrogate_escapes_is_stored(app: App) -> None:
    looks_bad = {"a": "\\u0000", "b": "\\ud800", "c": "\\\\u0000", "\\u0000": "key"}
    job_id = app.get_task("target").defer(**looks_bad)
    assert app.job_manager.get_job(job_id).args == looks_bad


def test_a_custom_ascii_json_dumps_is_checked_for_escaped_lone_surrogates() -> None:
    with pytest.raises(JobArgumentsError, match="lone surrogate"):
        serialize_args({"a": "\ud800"}, json.dumps)  # json.dumps escapes it: "\ud800"
    assert json.loads(serialize_args({"a": "😀"}, json.dumps)) == {"a": "😀"}


# -- names -----------------------------------------------------------------------------------


def name_ok(value: str, limit: int) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return 0 < len(value) <= limit and "\x00" not in value


any_name = (
    hostile_text
    | st.text(max_size=3)
    | st.text(st.characters(), min_size=250, max_size=260)
    | st.just("\ud800")
    | st.just("q\x00")
    | st.integers(min_value=0, max_value=1000).map(lambda n: "l" * (MAX_LOCK_LENGTH - 500 + n))
)


@SETTINGS
@given(queue=any_name, lock=any_name, queueing_lock=any_name)
def test_queue_and_lock_names_are_stored_exactly_or_refused(
    app: App, db: Any, queue: str, lock: str, queueing_lock: str
) -> None:
    before = count_jobs(db)
    valid = (
        name_ok(queue, MAX_NAME_LENGTH)
        and name_ok(lock, MAX_LOCK_LENGTH)
        and name_ok(queueing_lock, MAX_LOCK_LENGTH)
    )
    configured = app.get_task("target").configure
    if not valid:
        with pytest.raises(InvalidOption):
            configured(queue=queue, lock=lock, queueing_lock=queueing_lock).defer()
        assert count_jobs(db) == before
        return
    db.execute("DELETE FROM procq_jobs")  # queueing locks of earlier examples
    job_id = configured(queue=queue, lock=lock, queueing_lock=queueing_lock).defer()
    row = db.execute(
        "SELECT queue, lock, queueing_lock FROM procq_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert row == {"queue": queue, "lock": lock, "queueing_lock": queueing_lock}


@SETTINGS
@given(name=any_name)
def test_task_names_are_stored_exactly_or_refused_at_registration(
    sync_app: App, db: Any, name: str
) -> None:
    if not name_ok(name, MAX_NAME_LENGTH):
        with pytest.raises(InvalidOption):
            sync_app.task(name=name)(lambda: None)
        assert name not in sync_app.tasks
        return
    task = sync_app.task(name=name)(lambda: None)
    job_id = task.defer()
    row = db.execute("SELECT task_name FROM procq_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row["task_name"] == name


WORKER_NAMES = [
    "'; DROP TABLE procq_jobs; --",
    'quo"te\\back',
    "ünïcødé 😀",
    "%(queues)s",
    "x" * MAX_NAME_LENGTH,
]


async def test_a_worker_drains_queues_and_locks_with_hostile_names(db_url: str, db: Any) -> None:
    from procq_sqla import PsycopgConnector

    app = App(connector=PsycopgConnector(conninfo=db_url))
    seen: list[dict[str, Any]] = []

    @app.task(name=WORKER_NAMES[0])
    async def hostile(**kwargs: Any) -> None:
        seen.append(kwargs)

    async with app.open_async():
        for name in WORKER_NAMES:
            await hostile.configure(queue=name, lock=name, queueing_lock=name).defer_async(
                payload=name, **{name: [name]}
            )
        await app.run_worker_async(queues=WORKER_NAMES, wait=False, install_signal_handlers=False)
    statuses = db.execute("SELECT status, queue FROM procq_jobs ORDER BY id").fetchall()
    assert [(r["status"], r["queue"]) for r in statuses] == [
        ("succeeded", name) for name in WORKER_NAMES
    ]
    assert sorted(s["payload"] for s in seen) == sorted(WORKER_NAMES)
    assert all(s[s["payload"]] == [s["payload"]] for s in seen)
    assert db.execute("SELECT to_regclass('procq_jobs') IS NOT NULL AS ok").fetchone()["ok"]


# -- the command line ------------------------------------------------------------------------

outcomes: set[str] = set()
cli_text = hostile_text | st.text(max_size=5) | st.just("\udcff")  # argv's undecodable bytes
cli_json = json_args.map(lambda a: json.dumps(a, ensure_ascii=False)) | cli_text


@SETTINGS
@given(task=cli_text, payload=cli_json, queue=cli_text, lock=cli_text)
@example(task="t'; --", payload='{"a": "\'\\"", "%s": [1.5]}', queue='q"', lock="😀")
@example(task="t", payload='{"a": NaN}', queue="q", lock="l")
@example(task="t", payload='{"a": "\udcff"}', queue="q", lock="l")
@example(task="t", payload="{}", queue="q\udcff", lock="l")
def test_cli_defer_stores_exactly_or_fails_in_one_line(
    db_url: str, db: Any, task: str, payload: str, queue: str, lock: str
) -> None:
    before = count_jobs(db)
    db.execute("DELETE FROM procq_jobs WHERE status = 'todo'")
    before = count_jobs(db)
    options = ["--unknown", "--database-url", db_url, "--queue", queue, "--lock", lock]
    result = CliRunner().invoke(cli, ["defer", *options, "--", task, payload])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    if result.exit_code == 0:
        outcomes.add("stored")
        job = db.execute(
            "SELECT task_name, queue, lock, args FROM procq_jobs WHERE id = %s",
            (int(result.stdout.strip()),),
        ).fetchone()
        args = json.loads(payload) if payload.strip() else {}  # no JSON: no arguments
        assert job == {"task_name": task, "queue": queue, "lock": lock, "args": args}
        return
    assert result.exit_code in (1, 2), result.output
    outcomes.add(f"exit {result.exit_code}")
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert errors, result.stderr
    assert "Traceback" not in result.stderr
    assert count_jobs(db) == before


def test_cli_examples_covered_storing_and_both_kinds_of_failure() -> None:
    """Runs after the property test above (same file, in order): both paths were taken."""
    assert outcomes == {"stored", "exit 1", "exit 2"}


# -- DSNs and URLs ---------------------------------------------------------------------------

dsn_text = hostile_text | st.sampled_from(
    [
        "postgresql://u:p@[::1/db",
        "postgresql://u:p@host:99999/db",
        "postgresql://u:p@host:port/db",
        "postgresql://%zz@/db",
        "host='unterminated",
        "host=/nonexistent dbname",
        "sqlite:///procq.db",
        "postgresql+asyncpg://u@/db?host=/nonexistent",
        "postgresql:///db?sslmode=bogus",
        "postgresql:///db?host=/nonexistent&options=-c%20statement_timeout%3D",
        "dbname='a'b' host=/nonexistent",
    ]
)


@settings(SETTINGS, max_examples=30)
@given(dsn=dsn_text)
def test_hostile_dsns_give_a_connector_error_and_never_a_crash(dsn: str) -> None:
    app = App(
        connector=SyncPsycopgConnector(conninfo=dsn, kwargs={"connect_timeout": 2}, timeout=2)
    )
    try:
        app.open()
    except ConnectorError as exc:
        assert "\n" not in str(exc)
    else:  # a DSN that happens to reach the default server is fine
        app.close()


@settings(SETTINGS, max_examples=30)
@given(url=dsn_text)
def test_hostile_database_urls_on_the_command_line_fail_in_one_line(url: str) -> None:
    result = CliRunner().invoke(cli, ["jobs", "list", "--database-url", url])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr


# -- no SQL built by string formatting -------------------------------------------------------

PACKAGE = Path(procq_sqla.__file__).parent
RUNS_SQL = {
    "execute",
    "executemany",
    "execute_async",
    "fetch_one",
    "fetch_all",
    "fetch_one_async",
    "fetch_all_async",
    "exec_driver_sql",
}
SQL_START = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|DROP|ALTER|GRANT|REVOKE|TRUNCATE|LISTEN|"
    r"NOTIFY|SET|COPY)\s",
)


def sql_violations(path: Path) -> list[str]:
    """Calls that run SQL from anything but a named query or a psycopg `sql` composition,
    and SQL text built with f-strings, `%` or `.format()`, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in RUNS_SQL and node.args and not safe_query(node.args[0]):
                found.append(f"{where}: {node.func.attr}({ast.unparse(node.args[0])[:60]})")
            if node.func.attr == "format" and is_sql_text(node.func.value):
                found.append(f"{where}: SQL built with .format()")
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Mod | ast.Add)
            and (is_sql_text(node.left) or is_sql_text(node.right))
        ):
            found.append(f"{where}: SQL built with an operator")
        if isinstance(node, ast.JoinedStr) and is_sql_text(node):
            found.append(f"{where}: SQL built with an f-string")
    return found


def is_sql_text(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return bool(SQL_START.match(node.value))
    if isinstance(node, ast.JoinedStr) and node.values:
        first = node.values[0]
        return isinstance(first, ast.Constant) and bool(SQL_START.match(str(first.value)))
    return False


def safe_query(node: ast.AST) -> bool:
    """`queries["name"]`, a variable holding one, or `sql.SQL(...).format(sql.Identifier)`."""
    if isinstance(node, ast.Subscript):
        return isinstance(node.value, ast.Name) and node.value.id == "queries"
    if isinstance(node, ast.Name | ast.Attribute):
        return True  # a parameter or attribute: its callers are checked where it is built
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        source = ast.unparse(node.func)
        return source.endswith(("sql.SQL", ".format")) and "sql." in ast.unparse(node)
    return False


def test_no_sql_is_built_by_string_formatting_in_the_package() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    violations = [v for path in files for v in sql_violations(path)]
    assert violations == []


def test_the_scan_catches_sql_built_from_strings(tmp_path: Path) -> None:
    bad = tmp_path / "probe.py"
    bad.write_text(
        "def f(cur, q, name):\n"
        '    cur.execute(f"SELECT * FROM {name}")\n'
        "    cur.execute(\"DELETE FROM procq_jobs WHERE queue = '%s'\" % name)\n"
        '    cur.execute("UPDATE procq_jobs SET queue = {}".format(name))\n'
        '    cur.execute("SELECT 1")\n'
        '    cur.execute(queries["get_job"], {})\n',
        encoding="utf-8",
    )
    found = sql_violations(bad)
    assert len(found) == 7, found  # 4 calls, plus the f-string, % and .format themselves


def test_every_query_the_package_names_is_in_queries_sql() -> None:
    used: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.value, ast.Name)
                and node.value.id == "queries"
                and isinstance(node.slice, ast.Constant)
            ):
                used.add(node.slice.value)
    defined = set(load_queries())
    assert len(used) > 20
    assert used <= defined, used - defined
