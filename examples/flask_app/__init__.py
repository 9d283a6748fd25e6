"""A Flask + Flask-SQLAlchemy shop that defers its jobs inside its own `db.session`.

`POST /orders` writes an order and defers `ship_order` in the same transaction: both are
committed together, or neither is. Run it with the commands in README.md next to this
file; `tasks.py` holds the procq_sqla app the worker loads.
"""
