"""`serialize_many` (batch_defer's fast path) gives the texts and errors of
`serialize_args` job by job, and COPY rows carry any text intact."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from procq_sqla import JobArgumentsError
from procq_sqla.connectors.base import default_json_dumps, default_json_dumps_many
from procq_sqla.jobs import (
    BatchArgs,
    JobOptions,
    copy_defer_data,
    serialize_args,
    serialize_many,
)

GOOD: list[dict[str, Any]] = [
    {"i": 1},
    {"text": 'é ✓ "q" \\ \t\n', "nested": [1, 2.5, None, {"a": True}]},
    {"pair": "\U0001f600"},
    {},
]


def errors(args: list[dict[str, Any]], fast: bool) -> str:
    many = default_json_dumps_many if fast else None
    with pytest.raises(JobArgumentsError) as caught:
        serialize_many(args, default_json_dumps, many)
    return str(caught.value)


def test_the_same_texts_as_one_by_one() -> None:
    expected = [serialize_args(a, default_json_dumps) for a in GOOD]
    assert serialize_many(GOOD, default_json_dumps, default_json_dumps_many) == expected
    assert serialize_many(GOOD, default_json_dumps) == expected
    assert serialize_many(GOOD, json.dumps) == [json.dumps(a) for a in GOOD]


@pytest.mark.parametrize(
    "bad",
    [
        {"when": dt.datetime(2030, 1, 1)},
        {"x": float("nan")},
        {"x": "nul \x00 char"},
        {"x": "lone \ud800 surrogate"},
    ],
)
def test_the_same_error_as_one_by_one(bad: dict[str, Any]) -> None:
    with pytest.raises(JobArgumentsError) as one:
        serialize_args(bad, default_json_dumps)
    args = [*GOOD, bad, *GOOD]
    assert errors(args, fast=True) == str(one.value)
    assert errors(args, fast=False) == str(one.value)


def test_a_circular_argument_is_named() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    assert "argument 'x'" in errors([{"ok": 1}, {"x": loop}], fast=True)


def test_copy_rows_escape_what_copy_text_format_would_misread() -> None:
    texts = ['{"t":"a\\tb"}', '{"raw":"tab\there"}', '{"n":"line\\nnext"}']
    options = JobOptions(queue="q\\1", priority=-2, lock="L\n", scheduled_at=None)
    data = "".join(copy_defer_data("task", options, texts))
    lines = data.split("\n")[:-1]
    assert len(lines) == 3  # one line per job, whatever the texts hold
    fields = [line.split("\t") for line in lines]
    assert all(len(f) == 6 for f in fields)
    assert fields[0] == ["q\\\\1", "task", '{"t":"a\\\\tb"}', "-2", "L\\n", "\\N"]
    assert fields[1][2] == '{"raw":"tab\\there"}'
    with pytest.raises(JobArgumentsError, match="NUL character"):
        list(copy_defer_data("task", options, ['{"x":"\x00"}']))


def test_batch_args_serialize_chunk_by_chunk_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(BatchArgs, "CHUNK", 3)
    args = [{"i": i} for i in range(8)]
    lazy = BatchArgs(args, default_json_dumps, default_json_dumps_many)
    assert len(lazy) == 8
    assert [len(chunk) for chunk in lazy.chunks()] == [3, 3, 2]
    assert list(lazy) == [serialize_args(a, default_json_dumps) for a in args]
    assert lazy[7] == '{"i":7}'
    rows = "".join(copy_defer_data("t", JobOptions(), lazy)).splitlines()
    assert rows[0] == 'default\tt\t{"i":0}\t0\t\\N\t\\N' and len(rows) == 8
