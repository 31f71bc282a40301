"""asyncio helpers shared by the agent and the adapters: fire-and-forget tasks kept referenced,
and supervised long-running tasks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

log = logging.getLogger(__name__)


class Background:
    """Fire-and-forget tasks (a best-effort revoke, closing a broken channel), each referenced until
    it ends (the event loop keeps only weak references: an unreferenced task can vanish mid-way),
    its failure logged rather than lost."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background task %s failed: %r", task.get_name(), task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self, timeout: float) -> None:
        """Let the pending tasks finish (each is bounded by its own call timeout); cancel stragglers."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()


async def supervise(name: str, body: Callable[[], Awaitable[None]], stopping: asyncio.Event,
                    on_failure: Callable[[str, BaseException], None], on_restart: Callable[[str], None],
                    max_backoff: float = 30.0) -> None:
    """Run ``body`` until ``stopping`` is set: when it raises, log the traceback, report the failure
    (counted, shown on /readyz), and run it again after a back-off (0.5 s, doubling). A task of the
    agent never dies silently, taking the lease's keepalive or the watch with it. A body that ran for
    a minute before it failed starts again from the shortest back-off."""
    backoff = 0.5
    loop = asyncio.get_running_loop()
    while not stopping.is_set():
        started = loop.time()
        try:
            await body()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if loop.time() - started >= 60:
                backoff = 0.5
            log.exception("task %s failed; restarting it in %.1fs", name, backoff)
            on_failure(name, exc)
        try:
            await asyncio.wait_for(stopping.wait(), backoff)
            return
        except TimeoutError:
            pass
        backoff = min(backoff * 2, max_backoff)
        on_restart(name)


async def run_supervised(prefix: str, bodies: Iterable[tuple[str, Callable[[], Awaitable[None]]]],
                         stopping: asyncio.Event, on_failure: Callable[[str, BaseException], None],
                         on_restart: Callable[[str], None]) -> None:
    """Run each named body under ``supervise`` (as task ``prefix + name``) until ``stopping`` is set;
    then cancel them all and wait for them to end."""
    tasks = [asyncio.create_task(supervise(prefix + name, body, stopping, on_failure, on_restart),
                                 name=prefix + name)
             for name, body in bodies]
    try:
        await stopping.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
