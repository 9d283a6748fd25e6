"""A sync connector asked for async I/O says, in one sentence, what to use instead."""

from __future__ import annotations

import pytest

from procq_sqla import App, Psycopg2Connector, SyncPsycopgConnector, WrongConnector
from procq_sqla.connectors.base import AsyncConnector, SyncConnector


@pytest.mark.parametrize("connector_class", [Psycopg2Connector, SyncPsycopgConnector])
def test_sync_connector_names_the_async_connectors(connector_class: type) -> None:
    connector = connector_class()
    with pytest.raises(WrongConnector) as raised:
        connector.get_worker_connector()
    message = str(raised.value)
    for name in ("PsycopgConnector", "AiopgConnector", "get_worker_connector()"):
        assert name in message
    assert message.count(". ") == 0  # one sentence


@pytest.mark.parametrize("connector_class", [Psycopg2Connector, SyncPsycopgConnector])
def test_run_worker_on_sync_connector_fails_before_any_io(connector_class: type) -> None:
    app = App(
        connector=connector_class(host="unused")
        if connector_class is Psycopg2Connector
        else connector_class(conninfo="host=unused")
    )
    with pytest.raises(WrongConnector, match="AiopgConnector"):
        app.run_worker(wait=False)


def test_connectors_implement_exactly_their_protocol() -> None:
    from procq_sqla import AiopgConnector, PsycopgConnector

    for sync in (Psycopg2Connector(), SyncPsycopgConnector()):
        assert isinstance(sync, SyncConnector)
        assert not isinstance(sync, AsyncConnector)
    for asynchronous in (AiopgConnector(), PsycopgConnector()):
        assert isinstance(asynchronous, AsyncConnector)
        assert isinstance(asynchronous.get_sync_connector(), SyncConnector)
