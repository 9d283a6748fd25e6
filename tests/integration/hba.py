"""A role that must log in with a password: a pg_hba.conf line above the others, then
the file restored. Only on the test server we started (or reach through PG*)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import tuple_row

EDITS_PG_HBA = pytest.mark.skipif(
    bool(os.environ.get("PROCQ_DATABASE_URL")),
    reason="edits pg_hba.conf, so it runs on the embedded (or PG*) test server only",
)


@contextmanager
def role_with_password(
    admin: psycopg.Connection[Any], probe_url: str, password: str, *, superuser: bool = False
) -> Iterator[str]:
    """Create a login role that must give `password`, wait until the server asks for it
    (a reload is asynchronous: `probe_url` is tried without one), and drop it after."""
    role = f"procq_pw_{uuid.uuid4().hex[:8]}"
    with admin.cursor(row_factory=tuple_row) as cur:
        hba = Path(str((cur.execute("SHOW hba_file").fetchone() or ("",))[0]))
    admin.execute(
        sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
            sql.Identifier(role),
            sql.SQL("SUPERUSER" if superuser else "NOSUPERUSER"),
            sql.Literal(password),
        )
    )
    original = hba.read_text()
    hba.write_text(f"local all {role} scram-sha-256\nhost all {role} all scram-sha-256\n{original}")
    try:
        admin.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 5
        while True:
            try:
                psycopg.connect(probe_url, user=role, password="").close()
            except psycopg.OperationalError:
                break
            assert time.monotonic() < deadline, "pg_hba.conf reload not seen"
            time.sleep(0.05)
        yield role
    finally:
        hba.write_text(original)
        admin.execute("SELECT pg_reload_conf()")
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
