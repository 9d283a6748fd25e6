"""The log formatters: JSON lines carry the `extra=` fields as top-level keys."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Iterator

import pytest

from procq_sqla.logs import JSONFormatter, TextFormatter, configure_logging, record_extras


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    ours = logging.getLogger("procq_sqla")
    handlers, level, our_level = list(root.handlers), root.level, ours.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    ours.setLevel(our_level)


def make_record(msg: str = "job %s done", *args: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("procq_sqla.worker")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, args, None, extra=extra)


def test_json_lifts_every_extra_field_to_the_top_level() -> None:
    record = make_record(
        "job %s done",
        7,
        event="job_succeeded",
        job_id=7,
        task="add",
        queue="q",
        attempt=2,
        duration=0.25,
        worker="w1",
        error=None,
    )
    line = json.loads(JSONFormatter().format(record))
    assert line["message"] == "job 7 done"
    assert (line["level"], line["logger"]) == ("info", "procq_sqla.worker")
    expected = {
        "event": "job_succeeded",
        "job_id": 7,
        "task": "add",
        "queue": "q",
        "attempt": 2,
        "duration": 0.25,
        "worker": "w1",
        "error": None,
    }
    assert {k: line[k] for k in expected} == expected
    assert dt.datetime.fromisoformat(line["time"]).tzinfo is not None


def test_json_never_lets_an_extra_field_replace_the_message_or_level() -> None:
    record = make_record("real message", level_hint="x")
    record.__dict__["level"] = "fake"
    line = json.loads(JSONFormatter().format(record))
    assert line["level"] == "info" and line["level_hint"] == "x"


def test_json_serializes_unusual_values_as_text_and_keeps_the_exception() -> None:
    try:
        raise ValueError("kaput")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    logger = logging.getLogger("procq_sqla.worker")
    record = logger.makeRecord(
        logger.name,
        logging.ERROR,
        __file__,
        1,
        "failed",
        (),
        exc_info,
        extra={"when": dt.date(2030, 1, 2), "ids": (1, 2)},
    )
    line = json.loads(JSONFormatter().format(record))
    assert line["when"] == "2030-01-02" and line["ids"] == [1, 2]
    assert "ValueError: kaput" in line["exception"]


def test_record_extras_lists_only_what_extra_added() -> None:
    assert record_extras(make_record("x", job_id=1, queue="q")) == {"job_id": 1, "queue": "q"}
    assert record_extras(make_record("plain")) == {}


def test_text_format_is_one_readable_line() -> None:
    text = TextFormatter().format(make_record("job %s done", 3, job_id=3))
    assert text.endswith("INFO    procq_sqla.worker: job 3 done")
    assert "\n" not in text


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_json_at_info_and_debug_with_verbose() -> None:
    stream = io.StringIO()
    configure_logging(verbosity=0, log_format="json", stream=stream)
    worker = logging.getLogger("procq_sqla.worker")
    worker.debug("hidden", extra={"event": "job_started"})
    worker.info("shown", extra={"event": "job_succeeded", "job_id": 1})
    logging.getLogger("somebody.else").info("not ours")
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["message"], e["event"]) for e in events] == [("shown", "job_succeeded")]
    stream2 = io.StringIO()
    configure_logging(verbosity=1, log_format="text", stream=stream2)
    worker.debug("now visible")
    assert "now visible" in stream2.getvalue()
    assert stream.getvalue().count("\n") == 1  # the first handler was replaced, not stacked


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_rejects_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure_logging(log_format="xml")
