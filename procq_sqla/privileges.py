"""The GRANTs a least-privileged role needs on procq_sqla's objects (`procq grants`).

Migrations run as the schema owner; web processes and workers should not. A `web` role
defers jobs and reads or manages them (cancel, retry, abort); a `worker` role also claims
and finishes jobs, registers itself and rescues dead workers' jobs, defers periodic ticks
and prunes. Neither may create, alter or drop anything: privileges on tables are not
ownership. Identifiers are quoted by `psycopg.sql.Identifier`, so a role or schema name
can never change the statements' meaning.
"""

from __future__ import annotations

from typing import Literal

from psycopg import sql

from .exceptions import InvalidOption

Kind = Literal["worker", "web"]
KINDS: tuple[Kind, ...] = ("worker", "web")

# table -> privileges, per kind of process. DELETE on procq_jobs serves the worker's
# --delete-jobs and `procq jobs prune`; procq_alembic_version is read by healthchecks.
TABLE_PRIVILEGES: dict[Kind, dict[str, tuple[str, ...]]] = {
    "web": {
        "procq_jobs": ("SELECT", "INSERT", "UPDATE"),
        "procq_workers": ("SELECT",),
        "procq_alembic_version": ("SELECT",),
    },
    "worker": {
        "procq_jobs": ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "procq_workers": ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "procq_periodic_defers": ("SELECT", "INSERT", "DELETE"),
        "procq_alembic_version": ("SELECT",),
    },
}
# Identity sequences: periodic ticks draw the job id with nextval() before inserting.
SEQUENCES: dict[Kind, tuple[str, ...]] = {
    "web": ("procq_jobs_id_seq",),
    "worker": ("procq_jobs_id_seq", "procq_workers_id_seq"),
}
# The function of procq_0001's AFTER INSERT trigger, unused since procq_0002 (whose
# statements NOTIFY themselves) but kept, so grant scripts written for procq_0001 apply.
FUNCTIONS = ("procq_notify_new_jobs",)  # no arguments


def grant_statements(role: str, kind: str = "worker", *, schema: str = "public") -> list[str]:
    """The GRANT statements for `role`, a `worker` or `web` process, one per object."""
    if kind not in KINDS:
        raise InvalidOption(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    for what, name in (("role", role), ("schema", schema)):
        if not isinstance(name, str) or not name or "\x00" in name or len(name) > 63:
            raise InvalidOption(
                f"{what} must be a PostgreSQL identifier of 1 to 63 characters, not {name!r}"
            )
    grantee, space = sql.Identifier(role), sql.Identifier(schema)
    statements = [sql.SQL("GRANT USAGE ON SCHEMA {} TO {};").format(space, grantee)]
    for table, privileges in TABLE_PRIVILEGES[kind].items():
        statements.append(
            sql.SQL("GRANT {} ON TABLE {} TO {};").format(
                sql.SQL(", ").join(sql.SQL(p) for p in privileges),
                sql.Identifier(schema, table),
                grantee,
            )
        )
    for sequence in SEQUENCES[kind]:
        statements.append(
            sql.SQL("GRANT USAGE ON SEQUENCE {} TO {};").format(
                sql.Identifier(schema, sequence), grantee
            )
        )
    for function in FUNCTIONS:
        statements.append(
            sql.SQL("GRANT EXECUTE ON FUNCTION {}() TO {};").format(
                sql.Identifier(schema, function), grantee
            )
        )
    return [statement.as_string(None) for statement in statements]


def grant_script(role: str, kind: str = "worker", *, schema: str = "public") -> str:
    """`grant_statements` as a script, with a comment saying what it is for."""
    header = (
        f"-- procq_sqla: privileges of a {kind} role on procq_* objects "
        "(run as the schema owner, after `procq migrate`)"
    )
    return "\n".join([header, *grant_statements(role, kind, schema=schema)]) + "\n"
