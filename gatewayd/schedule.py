"""Periodic jobs on the event loop's monotonic clock.

Invariants:
- due times come from `loop.time()` (CLOCK_MONOTONIC) and are armed with `loop.call_at`: a step
  of the wall clock, either way and of any size, neither delays nor floods a job;
- at most one run of a job at a time: a due time that finds the previous run still going is
  skipped and reported (`on_skip`), never queued;
- a loop late by a period or more coalesces the due times it missed into the one run it makes
  now, counted arithmetically (no list of missed runs is ever built) and reported (`on_miss`);
  the job keeps its phase;
- `stop()` fires nothing more and waits, bounded, for the runs in flight; it cancels the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("gatewayd.schedule")

Run = Callable[[], Coroutine[Any, Any, None]]


class Job:
    __slots__ = ("due", "handle", "name", "on_miss", "on_skip", "period_s", "run", "task")

    def __init__(
        self,
        name: str,
        run: Run,
        period_s: float,
        due: float,
        on_skip: Callable[[], None] | None,
        on_miss: Callable[[int], None] | None,
    ) -> None:
        self.name = name
        self.run = run
        self.period_s = period_s
        self.due = due  # loop.time() of the next run
        self.on_skip = on_skip
        self.on_miss = on_miss
        self.task: asyncio.Task[None] | None = None
        self.handle: asyncio.TimerHandle | None = None


class Scheduler:
    """Jobs by name. Call from the loop's thread only (it is started lazily on the running
    loop)."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopped = False

    def add(
        self,
        name: str,
        run: Run,
        period_s: float,
        first_in_s: float | None = None,
        on_skip: Callable[[], None] | None = None,
        on_miss: Callable[[int], None] | None = None,
    ) -> None:
        """Run `run()` every `period_s`, first after `first_in_s` (default: one period).
        A job of the same name is replaced."""
        if period_s <= 0:
            raise ValueError(f"job {name}: period must be > 0 s, not {period_s}")
        self.remove(name)
        loop = asyncio.get_running_loop()
        first = period_s if first_in_s is None else first_in_s
        job = self.jobs[name] = Job(name, run, period_s, loop.time() + first, on_skip, on_miss)
        if not self._stopped:
            job.handle = loop.call_at(job.due, self._fire, job)

    def remove(self, name: str) -> None:
        """Fire `name` no more; a run in flight ends on its own (stop() still waits for it)."""
        job = self.jobs.pop(name, None)
        if job is not None and job.handle is not None:
            job.handle.cancel()

    def _fire(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        late = loop.time() - job.due
        missed = int(late // job.period_s) if late >= job.period_s else 0
        if missed and job.on_miss is not None:
            job.on_miss(missed)
        if job.task is not None and not job.task.done():
            if job.on_skip is not None:
                job.on_skip()
        else:
            job.task = task = loop.create_task(job.run(), name=job.name)
            self._inflight.add(task)
            task.add_done_callback(self._done)
        job.due += (missed + 1) * job.period_s
        job.handle = loop.call_at(job.due, self._fire, job)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:  # jobs handle their own errors; this is the net under them
            log.error(
                "job_failed job=%s error=%s", task.get_name(), type(exc).__name__, exc_info=exc
            )

    async def stop(self, grace_s: float) -> int:
        """Stop firing, wait up to `grace_s` for the runs in flight, cancel the others (and wait
        for them to unwind). Returns how many were cancelled."""
        self._stopped = True
        for job in self.jobs.values():
            if job.handle is not None:
                job.handle.cancel()
        pending = set(self._inflight)
        if pending:
            await asyncio.wait(pending, timeout=grace_s)
        leftovers = [t for t in pending if not t.done()]
        for t in leftovers:
            t.cancel()
        if leftovers:
            await asyncio.gather(*leftovers, return_exceptions=True)
        return len(leftovers)
