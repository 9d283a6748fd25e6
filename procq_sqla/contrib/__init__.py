"""Integrations with other libraries (SQLAlchemy), imported only when used."""
