"""The Flask example end to end: Flask's test client for the web side, a real
`python -m procq_sqla --app examples.flask_app.tasks.app worker` process for the jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

ROOT = Path(__file__).resolve().parents[2]
APP_PATH = "examples.flask_app.tasks.app"


@pytest.fixture
def flask_app(db_url: str) -> Iterator[Flask]:
    from examples.flask_app.app import create_app, init_db
    from examples.flask_app.models import db
    from examples.flask_app.tasks import app as procq

    app = create_app(db_url)
    with app.app_context():
        init_db()
    yield app
    procq.close()
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def client(flask_app: Flask) -> FlaskClient:
    return flask_app.test_client()


def start_worker(db_url: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "procq_sqla", "--app", APP_PATH, "worker", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def poll(client: FlaskClient, order_id: int, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(f"/orders/{order_id}").get_json()
        if body["status"] == "shipped" and body["job"]["status"] == "succeeded":
            return body
        assert time.monotonic() < deadline, f"order never shipped: {body}"
        time.sleep(0.05)


def test_order_is_shipped_by_a_worker_process(client: FlaskClient, db_url: str, db: Any) -> None:
    worker = start_worker(db_url, "--queues", "shipping", "--fetch-job-polling-interval", "30")
    try:
        created = client.post("/orders", json={"item": "book", "quantity": 2, "email": "a@b.c"})
        assert created.status_code == 201
        order = created.get_json()
        # polling every 30 s: the NOTIFY sent at the request's commit wakes the worker
        body = poll(client, order["id"], timeout=15.0)
        assert body["job"] == {"id": order["job_id"], "status": "succeeded", "attempts": 1}
        assert (body["item"], body["quantity"]) == ("book", 2)
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output


def test_failed_validation_after_deferring_leaves_no_job(
    client: FlaskClient, db_url: str, db: Any
) -> None:
    good = client.post("/orders", json={"item": "pen", "quantity": 1, "email": "x@y.z"})
    assert good.status_code == 201
    bad = client.post("/orders", json={"item": "pen", "quantity": 50, "email": "x@y.z"})
    assert bad.status_code == 422
    assert bad.get_json() == {"error": "quantity must be between 1 and 10"}
    bad_email = client.post("/orders", json={"item": "pen", "quantity": 1, "email": "nope"})
    assert bad_email.status_code == 422

    jobs = db.execute("SELECT id, task_name, args FROM procq_jobs").fetchall()
    assert [(j["task_name"], j["args"]) for j in jobs] == [
        ("ship_order", {"order_id": good.get_json()["id"]})
    ]
    assert db.execute("SELECT count(*) AS n FROM shop_orders").fetchone()["n"] == 1

    shown = client.get(f"/orders/{good.get_json()['id']}").get_json()
    assert shown["status"] == "new"
    assert shown["job"]["status"] == "todo"

    worker = start_worker(db_url, "--one-shot")
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output
    assert poll(client, good.get_json()["id"], timeout=5.0)["status"] == "shipped"
    assert db.execute("SELECT count(*) AS n FROM procq_jobs").fetchone()["n"] == 1


def test_unknown_order_is_404(client: FlaskClient) -> None:
    assert client.get("/orders/999").status_code == 404


def test_web_requests_borrow_flask_sqlalchemys_pool(
    flask_app: Flask, client: FlaskClient, db: Any
) -> None:
    from examples.flask_app.models import db as fdb

    with flask_app.app_context():
        engine = fdb.engine
    connects: list[object] = []
    from sqlalchemy import event

    event.listen(engine, "connect", lambda conn, record: connects.append(conn))
    for n in range(20):
        response = client.post("/orders", json={"item": f"i{n}", "quantity": 1, "email": "a@b"})
        assert response.status_code == 201
    assert connects == []  # the pool connection warmed by init_db served every request
