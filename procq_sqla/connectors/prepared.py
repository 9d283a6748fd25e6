"""The hottest statements (one `defer()` per web request, the worker's claim) as
server-side prepared statements, run below the drivers' general machinery.

psycopg2 sends a query's text every time, and the server parsing and planning
`defer_job` again costs about as much as executing it: the psycopg2-based connectors
PREPARE the defers once per connection and EXECUTE them (`connectors.psycopg2.execute`).

psycopg 3 prepares by itself, but its cursor spends about 50 µs per statement in Python
(query conversion, adapters, result objects), as much as the server spends on the job's
row beyond a bare INSERT, and about 0.1 ms of a cold worker's wake-up. For a statement
whose parameters are plain scalars (or lists of text), `run_prepared` talks to libpq
directly: parameters as text, the protocol's own Bind/Execute of a statement prepared
once per connection, and psycopg's own wait loop (so the GIL is released, Ctrl-C
cancels, notices still go to psycopg); the rows are loaded by psycopg's own Transformer
with the cursor's adapters. Any other parameter, a connection that is not in
autocommit, or one told not to prepare (`prepare_threshold=None`, as behind PgBouncer
in transaction mode) takes the cursor.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors
from psycopg.abc import AdaptContext, PQGen
from psycopg.adapt import Transformer
from psycopg.generators import execute as execute_gen
from psycopg.pq import ExecStatus
from psycopg.pq.abc import PGconn, PGresult

from ..sql import queries
from .base import Params

# What psycopg needs to make of the answer of a hot statement (its first column, as text).
ValueLoad = Callable[[bytes], Any]


@dataclass(frozen=True, slots=True)
class PreparedQuery:
    """A query as a named server-side prepared statement. The name carries a digest of
    the text, so a session shared through a pooler never runs another version's
    statement."""

    name: str
    prepare: str  # PREPARE name AS ... $1 ...
    execute: str  # EXECUTE name(%s, ...), for the driver's positional parameters
    keys: tuple[str, ...]  # which named parameter goes to $1, $2, ...
    protocol: bytes  # the body with $n placeholders, for a protocol-level Parse
    load: ValueLoad  # the first column of the first row, from its text

    def args(self, params: Params) -> tuple[Any, ...]:
        return tuple(map(params.__getitem__, self.keys))

    def text_args(self, params: Params) -> list[bytes | None] | None:
        """The parameters in PostgreSQL's text format, or None when one is not a plain
        str, int, datetime or list of str (or holds a NUL, which text format cannot
        carry): the driver's adapters then handle them, errors included."""
        out: list[bytes | None] = []
        for key in self.keys:
            value = params[key]
            kind = type(value)
            if value is None:
                out.append(None)
            elif kind is str:
                if "\x00" in value:
                    return None
                out.append(value.encode())
            elif kind is int:
                out.append(b"%d" % value)
            elif kind is datetime:
                out.append(value.isoformat().encode())
            elif kind is list:
                array = text_array(value)
                if array is None:
                    return None
                out.append(array)
            else:
                return None
        return out


def text_array(values: list[Any]) -> bytes | None:
    """A list of str as a text[] literal, every element quoted (so "NULL", commas and
    braces stay text) with backslash and double quote escaped; None for anything else."""
    parts = []
    for value in values:
        if type(value) is not str or "\x00" in value:
            return None
        parts.append('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return ("{" + ",".join(parts) + "}").encode()


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


def prepared_query(label: str, query: str, load: ValueLoad = int) -> PreparedQuery:
    """`query` (with `%(name)s` placeholders) as a prepared statement named after `label`."""
    keys: list[str] = []

    def number(match: re.Match[str]) -> str:
        key = match.group(1)
        if key is None:
            return "%"
        if key not in keys:
            keys.append(key)
        return f"${keys.index(key) + 1}"

    body = _PLACEHOLDER.sub(number, query)
    name = f"procq_{label}_{hashlib.sha1(query.encode()).hexdigest()[:12]}"
    arguments = f"({', '.join(['%s'] * len(keys))})" if keys else ""
    return PreparedQuery(
        name,
        f"PREPARE {name} AS {body}",
        f"EXECUTE {name}{arguments}",
        tuple(keys),
        body.encode(),
        load,
    )


# The hot queries: the defers (their value is the new job's id) and the claims.
PREPARED_QUERIES: dict[str, PreparedQuery] = {
    queries[label]: prepared_query(label, queries[label])
    for label in (
        "defer_job",
        "defer_plain_job",
        "claim_jobs_any_queue",
        "claim_jobs_in_queue",
        "claim_jobs_in_queues",
    )
}

# Which of them each live connection (psycopg 3 or psycopg2) holds, by name.
_names_by_connection: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()

# The statement was dropped behind our back (DISCARD ALL, a transaction-mode pooler), or
# is already there (a pooler's shared session: same name, same text).
_GONE = b"26000"
_EXISTS = b"42P05"


def prepared_names(conn: Any) -> set[str]:
    """The names of our statements `conn` has prepared (`setdefault` would build a
    weakref and a set on every call of the hot path)."""
    names = _names_by_connection.get(conn)
    if names is None:
        names = _names_by_connection[conn] = set()
    return names


def protocol_args(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], query: str, params: Params
) -> tuple[PreparedQuery, list[bytes | None]] | None:
    """The prepared statement and text parameters for `run_prepared`, or None where the
    cursor must run `query`."""
    prepared = PREPARED_QUERIES.get(query)
    if prepared is None or not conn.autocommit or conn.prepare_threshold is None:
        return None
    if conn.pgconn.parameter_status(b"client_encoding") != b"UTF8":
        return None
    args = prepared.text_args(params)
    return None if args is None else (prepared, args)


def _sqlstate(result: PGresult) -> bytes | None:
    return result.error_field(psycopg.pq.DiagnosticField.SQLSTATE)


def _run_gen(
    pgconn: PGconn, prepared: PreparedQuery, args: list[bytes | None], names: set[str]
) -> PQGen[PGresult]:
    """Prepare `prepared` on the connection unless it already is, then execute it; once
    more if the server had dropped it. One generator for psycopg's sync and async waits,
    as psycopg itself shares its protocol code. Errors are psycopg's own exceptions."""
    name = prepared.name.encode()
    for _ in (1, 2):
        if prepared.name not in names:
            pgconn.send_prepare(name, prepared.protocol)
            result: PGresult = (yield from execute_gen(pgconn))[-1]
            if result.status != ExecStatus.COMMAND_OK and _sqlstate(result) != _EXISTS:
                raise errors.error_from_result(result, encoding="utf-8")
            names.add(prepared.name)
        pgconn.send_query_prepared(name, args)
        result = (yield from execute_gen(pgconn))[-1]
        if result.status in (ExecStatus.TUPLES_OK, ExecStatus.COMMAND_OK):
            return result
        if _sqlstate(result) != _GONE:
            raise errors.error_from_result(result, encoding="utf-8")
        names.discard(prepared.name)
    raise psycopg.OperationalError(f"prepared statement {prepared.name} keeps disappearing")


def run_prepared(
    conn: psycopg.Connection[Any], prepared: PreparedQuery, args: list[bytes | None]
) -> PGresult:
    """Execute `prepared` with text `args` on an idle autocommit connection."""
    with conn.lock:
        return conn.wait(_run_gen(conn.pgconn, prepared, args, prepared_names(conn)))


async def run_prepared_async(
    conn: psycopg.AsyncConnection[Any], prepared: PreparedQuery, args: list[bytes | None]
) -> PGresult:
    """`run_prepared` on an asyncio connection."""
    async with conn.lock:
        return await conn.wait(_run_gen(conn.pgconn, prepared, args, prepared_names(conn)))


def shaped(result: PGresult, prepared: PreparedQuery, fetch: str, context: AdaptContext) -> Any:
    """A `run_prepared` result as `fetch` ("value", "one", "all") asks: the value by the
    statement's own `load`, rows as dicts through psycopg's Transformer with `context`'s
    adapters (a cursor's, so a custom JSON loader applies)."""
    if fetch == "value":
        value = result.get_value(0, 0) if result.ntuples else None
        return None if value is None else prepared.load(value)
    names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
    transformer = Transformer(context)
    transformer.set_pgresult(result)
    rows = transformer.load_rows(
        0, result.ntuples, lambda values: dict(zip(names, values, strict=True))
    )
    if fetch == "one":
        return rows[0] if rows else None
    return rows
