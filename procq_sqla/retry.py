"""When a failed job runs again.

`retry=` on a task accepts False (never), True (forever, with exponential backoff capped
at an hour), an int n (up to n retries, immediately), or a `RetryStrategy`. The decision
is a pure function of the attempts so far and the exception, computed in the worker and
written with the job's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass

from .exceptions import InvalidOption


@dataclass(frozen=True, slots=True)
class RetryStrategy:
    """Retry up to `max_attempts` times (None: forever), waiting
    `wait + linear_wait * n + exponential_wait ** (n + 1)` seconds before retry n+1
    (n counting from 0), at most `max_wait`; only for `retry_exceptions` when given."""

    max_attempts: int | None = None
    wait: float = 0.0
    linear_wait: float = 0.0
    exponential_wait: float = 0.0
    retry_exceptions: tuple[type[BaseException], ...] | None = None
    max_wait: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 0:
            raise InvalidOption("max_attempts must be zero or more")
        if min(self.wait, self.linear_wait, self.exponential_wait) < 0:
            raise InvalidOption("retry waits must not be negative")

    def has_retries_left(self, attempts: int) -> bool:
        """Whether a job that ran `attempts` times may run again, whatever the error
        (the rescue of a dead worker's job asks this: it has no exception to match)."""
        return self.max_attempts is None or attempts - 1 < self.max_attempts

    def retry_delay(self, attempts: int, exc: BaseException) -> float | None:
        """Seconds to wait before the next run, or None to give up.

        `attempts` counts the runs so far, this failed one included."""
        if self.retry_exceptions is not None and not isinstance(exc, self.retry_exceptions):
            return None
        retries_done = attempts - 1
        if self.max_attempts is not None and retries_done >= self.max_attempts:
            return None
        delay = self.wait + self.linear_wait * retries_done
        if self.exponential_wait:
            delay += self.exponential_wait ** (retries_done + 1)
        return min(delay, self.max_wait)


def get_retry_strategy(retry: bool | int | RetryStrategy | None) -> RetryStrategy | None:
    if retry is None or retry is False:
        return None
    if retry is True:
        return RetryStrategy(max_attempts=None, exponential_wait=2.0)
    if isinstance(retry, RetryStrategy):
        return retry
    if isinstance(retry, int):
        if retry < 0:
            raise InvalidOption(f"retry must be zero or more, not {retry}")
        return RetryStrategy(max_attempts=retry) if retry else None
    raise InvalidOption(f"retry must be a bool, an int or a RetryStrategy, not {retry!r}")
