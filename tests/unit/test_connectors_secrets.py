"""Passwords never show: in a connector's repr, in error messages, in the sync twin."""

from __future__ import annotations

import socket

import psycopg2
import pytest

from procq_sqla import AiopgConnector, Psycopg2Connector, PsycopgConnector, SyncPsycopgConnector
from procq_sqla.connectors.base import (
    connect_error,
    describe_params,
    dsn_secrets,
    has_unread_input,
    scrub,
    translate_error,
)

SECRET = "hunter2-xyz"


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://me:{SECRET}@db.example.org:5432/app",
        f"host=db password={SECRET} user=me",
        f"host=db password='{SECRET}' user=me",
        f"postgresql://me@db/app?password={SECRET}",
    ],
)
def test_dsn_secrets_finds_the_password_in_every_dsn_form(dsn: str) -> None:
    assert SECRET in dsn_secrets(dsn)
    assert SECRET not in scrub(f"libpq said: {dsn}", dsn_secrets(dsn))


def test_url_encoded_password_is_scrubbed_in_both_forms() -> None:
    secrets = dsn_secrets("postgresql://me:p%40ss%2Fword@h/db")
    assert scrub("p@ss/word and p%40ss%2Fword", secrets) == "*** and ***"


def test_keyword_password_is_a_secret_and_hidden_in_describe() -> None:
    assert dsn_secrets(None, {"password": SECRET}) == (SECRET,)
    shown = describe_params("dsn", None, {"host": "h", "password": SECRET})
    assert shown == "host='h', password='***'"


@pytest.mark.parametrize(
    "connector",
    [
        PsycopgConnector(conninfo=f"postgresql://me:{SECRET}@h/db"),
        PsycopgConnector(kwargs={"host": "h", "password": SECRET}),
        SyncPsycopgConnector(conninfo=f"host=h password={SECRET}"),
        Psycopg2Connector(dsn=f"postgresql://me:{SECRET}@h/db"),
        Psycopg2Connector(host="h", password=SECRET),
        AiopgConnector(dsn=f"postgresql://me:{SECRET}@h/db", maxsize=3),
        AiopgConnector(host="h", password=SECRET),
    ],
    ids=repr,
)
def test_repr_never_shows_the_password(connector: object) -> None:
    assert SECRET not in repr(connector)
    assert "***" in repr(connector)
    twin = getattr(connector, "get_sync_connector", None)
    if twin is not None:
        assert SECRET not in repr(twin())


def test_connect_error_is_one_line_naming_the_connector_without_password() -> None:
    cause = psycopg2.OperationalError(f'missing "=" after "{SECRET}"\n\tin connection info')
    error = connect_error(cause, "Psycopg2Connector", [SECRET])
    assert "\n" not in str(error)
    assert SECRET not in str(error)
    assert "Psycopg2Connector" in str(error)


def test_translate_error_scrubs_known_secrets() -> None:
    error = translate_error(
        ValueError(f"bad thing near {SECRET}"), sqlstate=None, constraint=None, secrets=[SECRET]
    )
    assert str(error) == "bad thing near ***"


def test_has_unread_input_sees_data_waiting_on_a_socket() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert not has_unread_input(left.fileno())
        right.sendall(b"E")  # what the server sends before it closes: an ErrorResponse
        assert has_unread_input(left.fileno())
        left.recv(1)
        right.close()  # end of file is "unread input" too
        assert has_unread_input(left.fileno())


def test_has_unread_input_treats_a_bad_descriptor_as_dead() -> None:
    left, right = socket.socketpair()
    fd = left.fileno()
    left.close()
    right.close()
    assert has_unread_input(fd)
