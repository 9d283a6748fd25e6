"""`Spare` / `AsyncSpare`: the connection of a connector's last statement, kept aside.

A loop of `defer()` calls spends about 20 µs of CPU per call checking a connection out of
a pool and back in (psycopg_pool, psycopg2's pool and its semaphore, SQLAlchemy's
QueuePool), as much as the server spends on the job's row beyond a bare INSERT. So each
sync connector keeps the connection of its last statement aside, and the next statement
from any thread takes it instead of going to the pool. Only one is ever kept; a second
finisher returns its own to the pool as before.

`AsyncSpare` does the same for the asyncio connectors (psycopg_pool's async checkout
costs more still), where statements of one event loop take turns without a lock.

The pool must not lose a connection to a quiet app, nor its upkeep: a watcher thread (a
timer on the event loop for `AsyncSpare`) gives the spare back once it has sat unused
for `IDLE_SECONDS`, a connection is never kept longer than `MAX_AGE_SECONDS` after it
left the pool (the pool's `max_lifetime`, `check` and the like then see it again), and
`close()` of the connector gives it back.
After `fork()` a child forgets the parent's spare without closing it: closing would end
the parent's session on the shared socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

Lease = TypeVar("Lease")

IDLE_SECONDS = 0.5
MAX_AGE_SECONDS = 30.0

_live: weakref.WeakSet[Any] = weakref.WeakSet()
# What a forked child took from its parent's spares: referenced forever, never closed.
_inherited: list[object] = []


class Spare(Generic[Lease]):
    """At most one lease (a connection and whatever the connector needs to give it
    back), handed to the next statement; `give_back` returns a lease to its pool, and
    `discard` one that must not be used again (the pool replaces its connection)."""

    def __init__(
        self, give_back: Callable[[Lease], None], discard: Callable[[Lease], None], name: str
    ) -> None:
        self._give_back = give_back
        self._discard = discard
        self._name = name
        self._lock = threading.Lock()
        self._lease: Lease | None = None
        self._since = 0.0  # when the kept lease left its pool
        self._used = 0.0  # when it was last kept
        self._watcher: threading.Thread | None = None
        _live.add(self)

    def take(self, usable: Callable[[Lease], bool]) -> tuple[Lease, float] | None:
        """The kept lease and when it left its pool if `usable(lease)` (its pool still
        the connector's, its connection alive), or None: then use the pool. An unusable
        one is discarded."""
        taken = self._pop()
        if taken is None or usable(taken[0]):
            return taken
        self._discard(taken[0])
        return None

    def _pop(self) -> tuple[Lease, float] | None:
        with self._lock:
            lease, self._lease = self._lease, None
            return None if lease is None else (lease, self._since)

    def keep(self, lease: Lease, since: float) -> bool:
        """Keep `lease` (out of its pool since `since`, a `time.monotonic()`) for the
        next statement; False when it is not kept and must go back to the pool."""
        now = time.monotonic()
        if now - since > MAX_AGE_SECONDS:
            return False
        with self._lock:
            if self._lease is not None:
                return False
            self._lease, self._since, self._used = lease, since, now
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name=f"procq-spare-{self._name}", daemon=True
                )
                self._watcher.start()
        return True

    def check_in(self, lease: Lease, since: float, clean: bool) -> None:
        """After a statement: keep a `clean` lease (idle, outside any transaction) as
        the spare, else give it back to its pool now."""
        if not (clean and self.keep(lease, since)):
            self._give_back(lease)

    def release(self) -> None:
        """Give the kept lease back now (the connector is closing)."""
        taken = self._pop()
        if taken is not None:
            self._return(taken[0])

    def _watch(self) -> None:
        """Give the lease back once it has been idle for IDLE_SECONDS, then end."""
        while True:
            time.sleep(IDLE_SECONDS)
            with self._lock:
                lease = self._lease
                if lease is not None and time.monotonic() - self._used < IDLE_SECONDS:
                    continue
                self._lease, self._watcher = None, None
            if lease is not None:
                self._return(lease)
            return

    def _return(self, lease: Lease) -> None:
        # a pool closed under us closes the connection itself; nothing to report
        with contextlib.suppress(Exception):
            self._give_back(lease)

    def _forget_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._watcher = None
        if self._lease is not None:
            _inherited.append(self._lease)
            self._lease = None


class AsyncSpare(Generic[Lease]):
    """`Spare` for one event loop: `give_back` is a coroutine function, and a timer on
    the loop replaces the watcher thread."""

    def __init__(
        self,
        give_back: Callable[[Lease], Awaitable[None]],
        discard: Callable[[Lease], Awaitable[None]],
    ) -> None:
        self._give_back = give_back
        self._discard = discard
        self._lease: Lease | None = None
        self._since = 0.0
        self._used = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._returning: set[asyncio.Task[None]] = set()
        _live.add(self)

    async def take(self, usable: Callable[[Lease], bool]) -> tuple[Lease, float] | None:
        """`Spare.take` on the event loop."""
        taken = self._pop()
        if taken is None or usable(taken[0]):
            return taken
        await self._discard(taken[0])
        return None

    def _pop(self) -> tuple[Lease, float] | None:
        lease, self._lease = self._lease, None
        return None if lease is None else (lease, self._since)

    def keep(self, lease: Lease, since: float) -> bool:
        now = time.monotonic()
        if self._lease is not None or now - since > MAX_AGE_SECONDS:
            return False
        self._lease, self._since, self._used = lease, since, now
        loop = asyncio.get_running_loop()
        if self._timer is None or self._timer_loop is not loop:  # a loop that ended
            self._timer, self._timer_loop = loop.call_later(IDLE_SECONDS, self._check), loop
        return True

    async def check_in(self, lease: Lease, since: float, clean: bool) -> None:
        """`Spare.check_in` on the event loop."""
        if not (clean and self.keep(lease, since)):
            await self._give_back(lease)

    async def release(self) -> None:
        """Give the kept lease back now (the connector is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        taken = self._pop()
        if taken is not None:
            with contextlib.suppress(Exception):
                await self._give_back(taken[0])

    def _check(self) -> None:
        self._timer = None
        if self._lease is None:
            return
        loop = asyncio.get_running_loop()
        if time.monotonic() - self._used < IDLE_SECONDS:
            self._timer = loop.call_later(IDLE_SECONDS, self._check)
            return
        lease, self._lease = self._lease, None
        task = loop.create_task(self._return(lease))
        self._returning.add(task)
        task.add_done_callback(self._returning.discard)

    async def _return(self, lease: Lease) -> None:
        with contextlib.suppress(Exception):
            await self._give_back(lease)

    def _forget_after_fork(self) -> None:
        self._timer = None
        if self._lease is not None:
            _inherited.append(self._lease)
            self._lease = None


def _after_fork_in_child() -> None:
    for spare in list(_live):
        spare._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
