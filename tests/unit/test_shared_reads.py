"""SharedReads: which feed readers share one read of the store, and which must not."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from feedline.chassis.notifications import CommitSignal
from feedline.chassis.shared_reads import SharedReads

pytestmark = pytest.mark.unit


class HeldReads:
    """A page reader whose reads stay open until the test lets them finish."""

    def __init__(self) -> None:
        self.started: list[tuple[int, int | None, int, tuple[str, ...] | None]] = []
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(
        self, start: int, end: int | None, limit: int, types: Sequence[str] | None
    ) -> str:
        self.started.append((start, end, limit, tuple(types) if types else None))
        number = len(self.started)
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return f"page {number}"


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_readers_watching_from_one_moment_share_one_read() -> None:
    store = HeldReads()
    reads = SharedReads(store)
    signal = CommitSignal()
    watch = signal.watch()
    readers = [asyncio.create_task(reads.read(watch, 5, None, 100, None)) for _ in range(30)]
    await settle()
    store.release.set()
    assert await asyncio.gather(*readers) == ["page 1"] * 30
    assert store.started == [(5, None, 100, None)]


async def test_different_pages_are_read_apart() -> None:
    store = HeldReads()
    reads = SharedReads(store)
    watch = CommitSignal().watch()
    readers = [
        asyncio.create_task(reads.read(watch, 5, None, 100, None)),
        asyncio.create_task(reads.read(watch, 6, None, 100, None)),
        asyncio.create_task(reads.read(watch, 5, 9, 100, None)),
        asyncio.create_task(reads.read(watch, 5, None, 10, None)),
        asyncio.create_task(reads.read(watch, 5, None, 100, ["A"])),
    ]
    await settle()
    store.release.set()
    assert sorted(await asyncio.gather(*readers)) == [f"page {n}" for n in range(1, 6)]
    assert len(store.started) == 5


async def test_a_reader_watching_from_after_a_commit_does_not_share_an_older_read() -> None:
    """The older read may have bounded itself by a head from before the commit: sharing it
    would answer the newer reader without the commit and leave it waiting for a signal
    that already fired."""
    store = HeldReads()
    reads = SharedReads(store)
    signal = CommitSignal()
    before = asyncio.create_task(reads.read(signal.watch(), 5, None, 100, None))
    await settle()
    signal.fire()
    after = asyncio.create_task(reads.read(signal.watch(), 5, None, 100, None))
    await settle()
    store.release.set()
    assert (await before, await after) == ("page 1", "page 2")
    assert len(store.started) == 2


async def test_a_reader_that_goes_away_does_not_cancel_the_others_read() -> None:
    store = HeldReads()
    reads = SharedReads(store)
    watch = CommitSignal().watch()
    leaving = asyncio.create_task(reads.read(watch, 5, None, 100, None))
    staying = asyncio.create_task(reads.read(watch, 5, None, 100, None))
    await settle()
    leaving.cancel()
    await settle()
    store.release.set()
    assert await staying == "page 1"
    assert leaving.cancelled()
    assert len(store.started) == 1


async def test_a_failed_read_fails_each_sharer_and_the_next_read_starts_afresh() -> None:
    store = HeldReads()
    reads = SharedReads(store)
    watch = CommitSignal().watch()
    store.fail = ConnectionError("the database went away")
    readers = [asyncio.create_task(reads.read(watch, 5, None, 100, None)) for _ in range(3)]
    await settle()
    store.release.set()
    results = await asyncio.gather(*readers, return_exceptions=True)
    assert [type(result) for result in results] == [ConnectionError] * 3
    store.fail = None
    assert await reads.read(watch, 5, None, 100, None) == "page 2"
