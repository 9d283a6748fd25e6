"""Make inserting a job cheap: no trigger, and no index entry a new job does not need.

A new job is `todo` with usually no lock and no queueing lock, yet it used to go into the
queueing-lock index (every `todo` row, NULL or not) and fire a statement trigger that
built a transition table and ran PL/pgSQL to NOTIFY, which also made every commit that
deferred a job wait longer. Now:

- `procq_jobs_queueing_lock_idx` holds only `todo` rows that have a queueing lock, and
  `procq_jobs_lock_doing_idx` only `doing` rows that have a lock (the uniqueness they
  enforce is unchanged: NULLs never collide);
- the AFTER INSERT trigger is gone: procq_sqla's own insert statements call
  `pg_notify('procq_jobs', queue)` themselves (once per queue per statement, delivered at
  commit as before). Rows inserted by hand, without that NOTIFY, are found by the
  workers' polling (`fetch_job_polling_interval`). The trigger's function is kept, unused,
  so that grant scripts written for procq_0001 still apply; procq_0001's downgrade drops it.

Revision ID: procq_0002
Revises: procq_0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "procq_0002"
down_revision = "procq_0001"
branch_labels = None
depends_on = None


def _recreate(name: str, columns: list[str], where: str) -> None:
    op.drop_index(name, table_name="procq_jobs")
    op.create_index(name, "procq_jobs", columns, unique=True, postgresql_where=sa.text(where))


def upgrade() -> None:
    op.execute("DROP TRIGGER procq_jobs_notify_insert ON procq_jobs")
    _recreate(
        "procq_jobs_queueing_lock_idx",
        ["queueing_lock"],
        "queueing_lock IS NOT NULL AND status = 'todo'",
    )
    _recreate("procq_jobs_lock_doing_idx", ["lock"], "lock IS NOT NULL AND status = 'doing'")


def downgrade() -> None:
    _recreate("procq_jobs_lock_doing_idx", ["lock"], "status = 'doing'")
    _recreate("procq_jobs_queueing_lock_idx", ["queueing_lock"], "status = 'todo'")
    op.execute(
        """
        CREATE TRIGGER procq_jobs_notify_insert
        AFTER INSERT ON procq_jobs
        REFERENCING NEW TABLE AS procq_new_jobs
        FOR EACH STATEMENT EXECUTE FUNCTION procq_notify_new_jobs()
        """
    )
