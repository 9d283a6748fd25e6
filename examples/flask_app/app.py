"""The Flask application: create orders and read them back with their job's status.

DATABASE_URL=postgresql://user:password@localhost/shop flask --app examples.flask_app.app init-db
DATABASE_URL=... flask --app examples.flask_app.app run
DATABASE_URL=... procq --app examples.flask_app.tasks.app worker
"""

from __future__ import annotations

from typing import Any

from flask import Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue

from procq_sqla import migrations
from procq_sqla.database import sqlalchemy_url
from procq_sqla.exceptions import JobNotFound

from .models import Order, db
from .tasks import app as procq
from .tasks import database_url, ship_order

MAX_QUANTITY = 10


class InvalidOrder(ValueError):
    """The order cannot be accepted; the message says why."""


def create_app(url: str | None = None) -> Flask:
    """A Flask app on `url` (default: DATABASE_URL) whose procq app borrows its engine."""
    flask_app = Flask(__name__)
    flask_app.config["SQLALCHEMY_DATABASE_URI"] = sqlalchemy_url(url or database_url(), "psycopg2")
    db.init_app(flask_app)
    with flask_app.app_context():
        procq.close()  # a new Flask app (tests) replaces the engine the last one lent
        procq.open(db.engine)  # defers borrow Flask-SQLAlchemy's pool: no second pool
    flask_app.register_error_handler(InvalidOrder, invalid_order)
    flask_app.add_url_rule("/orders", view_func=create_order, methods=["POST"])
    flask_app.add_url_rule("/orders/<int:order_id>", view_func=show_order)

    @flask_app.cli.command("init-db")
    def init_db_command() -> None:
        """Create procq's tables (Alembic) and the shop's table."""
        init_db()
        print("database ready")

    return flask_app


def init_db() -> None:
    """procq's schema through its Alembic revisions, the shop's with create_all()."""
    migrations.upgrade(db.engine)
    db.create_all()


def create_order() -> ResponseReturnValue:
    data: dict[str, Any] = request.get_json(force=True)
    order = Order(
        item=str(data.get("item", "")),
        quantity=int(data.get("quantity", 1)),
        email=str(data.get("email", "")),
    )
    db.session.add(order)
    db.session.flush()  # the order's id, inside the still-open transaction
    order.job_id = ship_order.configure(session=db.session).defer(order_id=order.id)
    check(order)  # a late check: if it fails, the job goes away with the order
    db.session.commit()
    return jsonify(id=order.id, job_id=order.job_id, status=order.status), 201


def check(order: Order) -> None:
    if not order.item:
        raise InvalidOrder("item is required")
    if not 1 <= order.quantity <= MAX_QUANTITY:
        raise InvalidOrder(f"quantity must be between 1 and {MAX_QUANTITY}")
    if "@" not in order.email:
        raise InvalidOrder("email must be an e-mail address")


def invalid_order(exc: InvalidOrder) -> ResponseReturnValue:
    db.session.rollback()  # the order and its deferred job vanish together
    return jsonify(error=str(exc)), 422


def show_order(order_id: int) -> ResponseReturnValue:
    order = db.session.get(Order, order_id)
    if order is None:
        abort(404)
    job: dict[str, Any] | None = None
    if order.job_id is not None:
        try:
            found = procq.job_manager.get_job(order.job_id)
            job = {"id": found.id, "status": found.status, "attempts": found.attempts}
        except JobNotFound:
            job = {"id": order.job_id, "status": "deleted"}
    return jsonify(
        id=order.id, item=order.item, quantity=order.quantity, status=order.status, job=job
    )
