"""procq_0002: no insert trigger, and partial indexes a new job does not enter; its
downgrade brings procq_0001's trigger and indexes back."""

from __future__ import annotations

import psycopg

from procq_sqla import migrations
from procq_sqla.database import sqlalchemy_url


def shape(url: str) -> tuple[set[str], dict[str, str]]:
    with psycopg.connect(url) as conn:
        triggers = {
            r[0]
            for r in conn.execute(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
                " AND tgrelid = 'procq_jobs'::regclass"
            )
        }
        predicates = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT indexrelid::regclass::text, pg_get_expr(indpred, indrelid)"
                " FROM pg_index WHERE indrelid = 'procq_jobs'::regclass"
                " AND indexrelid::regclass::text IN"
                " ('procq_jobs_queueing_lock_idx', 'procq_jobs_lock_doing_idx')"
            )
        }
    return triggers, predicates


def notified_by_a_hand_insert(url: str, queue: str, wait: float) -> list[str]:
    """The NOTIFY payloads a listener gets for one row inserted by plain SQL."""
    with (
        psycopg.connect(url, autocommit=True) as conn,
        psycopg.connect(url, autocommit=True) as listen,
    ):
        listen.execute("LISTEN procq_jobs")
        conn.execute("INSERT INTO procq_jobs (queue, task_name) VALUES (%s, 't')", (queue,))
        return [n.payload for n in listen.notifies(timeout=wait, stop_after=1)]


def test_procq_0002_drops_the_trigger_and_leans_the_partial_indexes(empty_db_url: str) -> None:
    url = sqlalchemy_url(empty_db_url)
    migrations.upgrade(url, "procq_0002")  # procq_0003 rewrites the predicates' casts
    triggers, predicates = shape(empty_db_url)
    assert triggers == set()
    assert predicates == {
        "procq_jobs_queueing_lock_idx": "((queueing_lock IS NOT NULL) AND (status = 'todo'::text))",
        "procq_jobs_lock_doing_idx": "((lock IS NOT NULL) AND (status = 'doing'::text))",
    }
    assert notified_by_a_hand_insert(empty_db_url, "new", 0.3) == []  # found by polling


def test_downgrade_restores_the_trigger_and_indexes(empty_db_url: str) -> None:
    url = sqlalchemy_url(empty_db_url)
    migrations.upgrade(url)
    migrations.downgrade(url, "procq_0001")
    triggers, predicates = shape(empty_db_url)
    assert triggers == {"procq_jobs_notify_insert"}
    assert predicates == {
        "procq_jobs_queueing_lock_idx": "(status = 'todo'::text)",
        "procq_jobs_lock_doing_idx": "(status = 'doing'::text)",
    }
    assert notified_by_a_hand_insert(empty_db_url, "old", 1.0) == ["old"]
    migrations.upgrade(url)
    assert shape(empty_db_url)[0] == set()
