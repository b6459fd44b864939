"""Concurrency limits: slots per key and per agent, held for a request's whole life, a stream's included."""

from __future__ import annotations

import asyncio
import contextlib


class Lease:
    """One held slot; `release` is safe to call more than once (every exit path calls it)."""

    __slots__ = ("_semaphore",)

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore: asyncio.Semaphore | None = semaphore

    def release(self) -> None:
        if self._semaphore is not None:
            self._semaphore.release()
            self._semaphore = None


class Slots:
    """Named semaphores, made on first use. A changed limit gets a new semaphore; leases of the old one still
    release into it."""

    def __init__(self) -> None:
        self._semaphores: dict[tuple[str, int], asyncio.Semaphore] = {}

    def busy(self, name: str, limit: int) -> bool:
        """Whether a request for this slot would have to wait."""
        semaphore = self._semaphores.get((name, limit))
        return semaphore is not None and semaphore.locked()

    async def acquire(self, name: str, limit: int, wait: float) -> Lease | None:
        """A lease, waiting up to `wait` seconds for a slot; None when none came free in time."""
        semaphore = self._semaphores.get((name, limit))
        if semaphore is None:
            semaphore = self._semaphores[(name, limit)] = asyncio.Semaphore(limit)
        if not semaphore.locked():
            await semaphore.acquire()
            return Lease(semaphore)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(semaphore.acquire(), wait)
            return Lease(semaphore)
        return None
