"""Jobs as values: the `Job` row, the options a job is deferred with, and the pure
builders that turn a deferral into query parameters.

Everything here is I/O-free and shared by the sync and async paths, so validation
(JSON arguments, timezone-aware schedules, option types) happens once, before any
connection is touched: a bad call never leaves a half-written job.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .exceptions import InvalidOption, JobArgumentsError

if TYPE_CHECKING:
    from .app import App
    from .tasks import Task

MAX_NAME_LENGTH = 255
MAX_LOCK_LENGTH = 1024
MAX_ARGS_BYTES = 64 * 1024 * 1024
PRIORITY_RANGE = (-(2**31), 2**31 - 1)


@dataclass(slots=True)
class Job:
    """One row of `procq_jobs`, as the worker and the job manager see it."""

    id: int
    task_name: str
    queue: str = "default"
    args: dict[str, Any] = field(default_factory=dict)
    status: str = "todo"
    priority: int = 0
    lock: str | None = None
    queueing_lock: str | None = None
    scheduled_at: dt.datetime | None = None
    attempts: int = 0
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    last_error: str | None = None
    worker_id: int | None = None
    abort_requested: bool = False

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        """A job from a row holding any subset of the columns (one `get` per field: the
        worker builds one per claimed job)."""
        get = row.get
        return cls(
            row["id"],
            row["task_name"],
            get("queue", "default"),
            get("args") or {},
            get("status", "todo"),
            get("priority", 0),
            get("lock"),
            get("queueing_lock"),
            get("scheduled_at"),
            get("attempts", 0),
            get("created_at"),
            get("started_at"),
            get("finished_at"),
            get("last_error"),
            get("worker_id"),
            get("abort_requested", False),
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class JobOptions:
    """Where and when a job runs; a task's defaults overridden by `configure()`."""

    queue: str = "default"
    priority: int = 0
    lock: str | None = None
    queueing_lock: str | None = None
    scheduled_at: dt.datetime | None = None

    def replace(self, **changes: Any) -> JobOptions:
        return dataclasses.replace(self, **changes)

    def validated(self) -> JobOptions:
        _check_name("queue", self.queue)
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise InvalidOption(f"priority must be an integer, not {self.priority!r}")
        if not PRIORITY_RANGE[0] <= self.priority <= PRIORITY_RANGE[1]:
            raise InvalidOption(f"priority {self.priority} is outside the 32-bit integer range")
        for name in ("lock", "queueing_lock"):
            value = getattr(self, name)
            if value is not None:
                _check_text(name, value, MAX_LOCK_LENGTH)
        return self


def _check_text(what: str, value: object, limit: int) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidOption(f"{what} must be a non-empty string, not {value!r}")
    if len(value) > limit:
        raise InvalidOption(f"{what} is {len(value)} characters long; the limit is {limit}")
    if "\x00" in value:
        raise InvalidOption(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidOption(
            f"{what} contains a lone surrogate, which is not valid Unicode: {value!r}"
        ) from None


def _check_name(what: str, value: object) -> None:
    _check_text(what, value, MAX_NAME_LENGTH)


def check_task_name(name: object) -> str:
    _check_name("task name", name)
    assert isinstance(name, str)
    return name


def resolve_schedule(
    schedule_at: dt.datetime | None, schedule_in: Mapping[str, float] | None
) -> dt.datetime | None:
    """The absolute start time from `schedule_at` (aware) or `schedule_in` (timedelta kwargs)."""
    if schedule_at is not None and schedule_in is not None:
        raise InvalidOption("give schedule_at or schedule_in, not both")
    if schedule_in is not None:
        try:
            delta = dt.timedelta(**schedule_in)
        except TypeError as exc:
            raise InvalidOption(
                f"schedule_in takes timedelta keywords such as {{'seconds': 30}}: {exc}"
            ) from exc
        return dt.datetime.now(dt.UTC) + delta
    if schedule_at is not None:
        if not isinstance(schedule_at, dt.datetime):
            raise InvalidOption(f"schedule_at must be a datetime, not {schedule_at!r}")
        if schedule_at.tzinfo is None or schedule_at.utcoffset() is None:
            raise InvalidOption(
                "schedule_at must be timezone-aware, e.g. datetime.now(timezone.utc) + ..."
            )
    return schedule_at


def serialize_args(args: Mapping[str, Any], dumps: Any) -> str:
    """The job's arguments as JSON text, or a `JobArgumentsError` naming the culprit."""
    try:
        text: str = dumps(args if type(args) is dict else dict(args))
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise JobArgumentsError(_describe_bad_argument(args, dumps, exc)) from exc
    escapes = "\\" in text  # most arguments have none: no regex runs for them
    if escapes and "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise JobArgumentsError(_NUL_MESSAGE)
    try:  # ASCII (most arguments) is its own size in UTF-8 and holds no surrogate
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise JobArgumentsError(_SURROGATE_MESSAGE) from exc
    if escapes and _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate_escape(text):
        raise JobArgumentsError(_SURROGATE_MESSAGE)
    if size > MAX_ARGS_BYTES:
        raise JobArgumentsError(
            f"job arguments are {size} bytes of JSON; the limit is {MAX_ARGS_BYTES}"
        )
    return text


_NUL_MESSAGE = (
    "job arguments contain a NUL character (\\u0000), which PostgreSQL's jsonb cannot store"
)
# A JSON \u0000 escape, not an escaped backslash followed by "u0000".
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_MESSAGE = (
    "job arguments contain a lone surrogate (half of a UTF-16 pair, e.g. '\\ud800'), which "
    "is not valid Unicode and cannot be stored: decode the text properly first"
)


def _has_lone_surrogate_escape(text: str) -> bool:
    """For a custom `json_dumps` that escapes non-ASCII: a `\\udXXX` not in a pair."""
    try:
        json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except ValueError:
        return False  # not JSON we can read back: PostgreSQL will say what is wrong
    return False


def _describe_bad_argument(args: Mapping[str, Any], dumps: Any, exc: BaseException) -> str:
    for key, value in args.items():
        try:
            dumps({key: value})
        except (TypeError, ValueError, OverflowError, RecursionError) as inner:
            return f"argument {key!r} cannot be stored as JSON: {inner}"
    return f"job arguments cannot be stored as JSON: {exc}"


def serialize_many(
    args_list: Sequence[Mapping[str, Any]],
    dumps: Any,
    dumps_many: Callable[[list[Any]], list[str]] | None = None,
) -> list[str]:
    """`serialize_args` for a whole batch: the same texts and the same errors, with the
    checks run once over the batch instead of once per job (a batch_defer of 100,000
    jobs spent longer checking its arguments than PostgreSQL spent storing them).
    `dumps_many` encodes a list of values at once (the default encoder's fast path)."""
    values = [a if type(a) is dict else dict(a) for a in args_list]
    try:
        texts = dumps_many(values) if dumps_many is not None else [dumps(v) for v in values]
        blob = "\n".join(texts)
        suspicious = (
            ("\\u0000" in blob and _NUL_ESCAPE.search(blob) is not None)
            or _SURROGATE_ESCAPE.search(blob) is not None
            or max(map(len, texts), default=0) * 4 > MAX_ARGS_BYTES  # 4 bytes a character
        )
        if not suspicious:
            blob.encode("utf-8")  # a lone surrogate fails here
            return texts
    except (TypeError, ValueError, OverflowError, RecursionError, UnicodeEncodeError):
        pass
    # something is wrong (or looks it): the one-by-one path names the culprit
    return [serialize_args(v, dumps) for v in values]


def copy_escape(text: str) -> str:
    """A value for PostgreSQL's COPY text format."""
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        text = text.replace("\r", "\\r")
    return text


class BatchArgs(Sequence[str]):
    """The JSON texts of a batch's arguments, serialized chunk by chunk when first read.

    The COPY path reads `chunks()` while the COPY runs, so the server stores one chunk
    while the next is serialized (a bad argument then fails the COPY, which rolls back:
    nothing is written either way); anything else reads it whole, before any I/O."""

    CHUNK = 5_000

    def __init__(
        self,
        args_list: Sequence[Mapping[str, Any]],
        dumps: Any,
        dumps_many: Callable[[list[Any]], list[str]] | None = None,
    ) -> None:
        self._args = args_list
        self._dumps = dumps
        self._dumps_many = dumps_many
        self._texts: list[str] | None = None

    def __len__(self) -> int:
        return len(self._args)

    def chunks(self) -> Iterator[Sequence[str]]:
        if self._texts is not None:
            yield from _slices(self._texts, self.CHUNK)
            return
        for part in _slices(self._args, self.CHUNK):
            yield serialize_many(part, self._dumps, self._dumps_many)

    def _all(self) -> list[str]:
        if self._texts is None:
            self._texts = [text for chunk in self.chunks() for text in chunk]
        return self._texts

    def __getitem__(self, index: Any) -> Any:
        return self._all()[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())


def _slices(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def copy_defer_data(task_name: str, options: JobOptions, args_json: Sequence[str]) -> Iterator[str]:
    """The rows of a COPY into procq_jobs (queue, task_name, args, priority, lock,
    scheduled_at) in COPY's text format, a chunk of jobs at a time: the options once,
    each job's arguments (a `BatchArgs` is serialized as the chunks are read)."""
    lock = r"\N" if options.lock is None else copy_escape(options.lock)
    at = r"\N" if options.scheduled_at is None else options.scheduled_at.isoformat()
    head = f"{copy_escape(options.queue)}\t{copy_escape(task_name)}\t"
    tail = f"\t{options.priority}\t{lock}\t{at}\n"
    chunks = (
        args_json.chunks()
        if isinstance(args_json, BatchArgs)
        else _slices(args_json, BatchArgs.CHUNK)
    )
    for texts in chunks:
        blob = "".join(texts)
        if "\x00" in blob:  # not valid JSON, and COPY cannot carry it
            raise JobArgumentsError(_NUL_MESSAGE)
        if "\\" in blob or "\t" in blob or "\n" in blob or "\r" in blob:
            yield "".join([head + copy_escape(text) + tail for text in texts])
        else:
            yield "".join([head + text + tail for text in texts])


def is_plain(options: JobOptions) -> bool:
    """No priority, lock, queueing lock or schedule: `defer_plain_job` inserts it."""
    return (
        options.priority == 0
        and options.lock is None
        and options.queueing_lock is None
        and options.scheduled_at is None
    )


def defer_params(
    task_name: str, options: JobOptions, args_json: str, *, plain: bool = False
) -> dict[str, Any]:
    """Parameters for `defer_job`, or with `plain` (see `is_plain`) `defer_plain_job`."""
    params: dict[str, Any] = {"queue": options.queue, "task_name": task_name, "args": args_json}
    if not plain:
        params["priority"] = options.priority
        params["lock"] = options.lock
        params["queueing_lock"] = options.queueing_lock
        params["scheduled_at"] = options.scheduled_at
    return params


def batch_defer_params(
    task_name: str, options: JobOptions, args_json: Iterable[str]
) -> dict[str, Any]:
    """Parameters for `batch_defer_jobs`: the options once, the arguments as one JSON array
    (one text value: no per-element array quoting on either side). `queueing_locks` is
    for matching the returned ids back onto the input."""
    args_list = list(args_json)
    return {
        "queue": options.queue,
        "task_name": task_name,
        "args": "[" + ",".join(args_list) + "]",
        "priority": options.priority,
        "lock": options.lock,
        "queueing_lock": options.queueing_lock,
        "scheduled_at": options.scheduled_at,
        "queueing_locks": [options.queueing_lock] * len(args_list),
    }


def match_batch_ids(
    queueing_locks: list[str | None], rows: Sequence[Mapping[str, Any]]
) -> list[int | None]:
    """Map the ids a batch insert returned back onto its input (None where skipped)."""
    ids: list[int | None] = []
    position = 0
    for lock in queueing_locks:
        row = rows[position] if position < len(rows) else None
        if row is not None and (lock is None or row["queueing_lock"] == lock):
            ids.append(int(row["id"]))
            position += 1
        else:
            ids.append(None)
    return ids


@dataclass
class JobContext:
    """What a task given `pass_context=True` receives as its first argument."""

    job: Job
    app: App
    task: Task[..., Any] | None = None
    worker_name: str | None = None
    worker_id: int | None = None
    additional_context: dict[str, Any] = field(default_factory=dict)
    # a plain flag (set by the worker's loop, read by the task's thread): an Event per job
    # would cost a lock and a condition for every job run
    _abort_requested: bool = field(default=False, repr=False)
    # when this run began, on the worker's time.perf_counter() clock
    run_started: float = field(default=0.0, repr=False)

    def should_abort(self) -> bool:
        """True once someone asked to abort this job (`job_manager.abort(id)`)."""
        return self._abort_requested

    def request_abort(self) -> None:
        """Called by the worker when an abort of this job was asked for."""
        self._abort_requested = True
