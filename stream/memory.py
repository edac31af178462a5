"""Giving a batch's freed memory back to the operating system.

A batch allocates its touched users' decoded states, slates and encodings, then frees them.
CPython hands blocks over 512 bytes to the C allocator, and glibc keeps freed heap pages for
reuse, so a worker's RSS stays at its largest batch's high-water mark: 19 KB per user held
after a drain in ~4,600-event batches, 5 KB with ``malloc_trim`` after each batch
(docs/benchmarks.md). Where glibc is absent (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


def glibc_malloc_trim() -> Callable[[], object] | None:
    """``malloc_trim(0)`` of the process's C library, or None when it has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class MemoryReleaser:
    """Calls ``release`` after a batch, at most once per ``interval_seconds`` (a trim walks the
    heap: a few milliseconds, worth it after a large batch, not after every small one).

    >>> calls = []
    >>> clock = iter([0.0, 0.4, 1.2, 1.3]).__next__
    >>> releaser = MemoryReleaser(lambda: calls.append(1), interval_seconds=1.0, clock=clock)
    >>> for _ in range(4):
    ...     releaser.after_batch()
    >>> len(calls)  # at 0.0 and 1.2
    2

    The batch at 1.3 was not followed by a release; once the interval has passed, a timer's
    ``when_idle`` returns what it freed (the last batch of a burst would otherwise keep its
    memory until traffic resumes):

    >>> clock = iter([1.9, 2.3, 2.5]).__next__
    >>> releaser.clock = clock
    >>> releaser.when_idle(), releaser.when_idle(), releaser.when_idle()  # 1.9: too soon
    (False, True, False)
    >>> len(calls)
    3
    """

    def __init__(
        self,
        release: Callable[[], object] | None,
        interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.release = release if interval_seconds > 0 else None
        self.interval_seconds = interval_seconds
        self.clock = clock
        self._last: float | None = None
        self._pending = False  # a batch ended since the last release

    def after_batch(self) -> None:
        if self.release is None:
            return
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_seconds:
            self._pending = True
            return
        self._release(now)

    def when_idle(self) -> bool:
        """Release now if a batch ended since the last release and the interval has passed
        (called by a timer); True if it released."""
        if self.release is None or not self._pending:
            return False
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_seconds:
            return False
        self._release(now)
        return True

    def _release(self, now: float) -> None:
        assert self.release is not None
        self._last = now
        self._pending = False
        self.release()


class CollectorBetweenBatches:
    """Holds Python's cyclic garbage collector off while a batch is handled, so that its
    young collections run between batches.

    A young collection scans every tracked object allocated since the last one and still
    alive. Inside a batch that is the batch's own work in progress: its users' lists and
    tuples (interest tops, profiles, banner contexts), ~160,000 objects at the collection
    in a drain of site-paced traffic, ~100 ms each, ~5% of the worker's CPU
    (docs/benchmarks.md). Once the batch is handled nearly all of them are freed by
    reference counting; what the collector finds then is what outlives batches. Objects
    counted while it was off make the first allocation after the batch run the
    collection, when the young generation is past its threshold. Cyclic garbage a batch makes
    waits for the batch's end; a batch held up for longer than ``max_seconds`` (Redis down:
    the batch waits for its writes) turns the collector back on, so that the worker's other
    tasks meanwhile (the fetcher, timers, scrapes) do not pile up garbage for the outage.

    >>> pause = CollectorBetweenBatches()
    >>> with pause.during_batch():
    ...     gc.isenabled()
    False
    >>> gc.isenabled()
    True
    """

    def __init__(self, enabled: bool = True, max_seconds: float = 5.0) -> None:
        self.enabled = enabled
        self.max_seconds = max_seconds

    @contextmanager
    def during_batch(self) -> Iterator[None]:
        # (left alone when something else turned the collector off: it stays off)
        if not self.enabled or not gc.isenabled():
            yield
            return
        gc.disable()
        try:
            resume: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
                self.max_seconds, gc.enable
            )
        except RuntimeError:  # no event loop (a synchronous caller): nothing can hold it up
            resume = None
        try:
            yield
        finally:
            if resume is not None:
                resume.cancel()
            gc.enable()
