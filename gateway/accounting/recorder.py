"""Takes records off the request path: a bounded buffer, batched writes, retries, shutdown flush.

`submit()` is synchronous and O(1); it never blocks and never raises. A background task
writes batches of up to `batch_size` records every `flush_interval_s` (sooner when a full
batch is waiting); once three batches wait it is behind, and takes up to CATCH_UP_BATCHES
batches per write. When the store fails, the batch stays buffered and is retried every
`retry_interval_s`; stores skip request_ids they already hold, so a retried batch whose first
attempt did land is not counted twice.

Drop policy: the buffer holds at most `queue_size` items, the batch being written included.
When it is full the NEWEST item (the one being submitted) is dropped and counted in
tollgate_store_dropped_records_total. An accepted record is therefore never evicted later:
whether a record "fit" is decided, and counted, at submit time, and a quality update can
never be dropped while its record stays. Anything still buffered when close() times out is
counted as dropped too. Nothing is dropped silently.

Journal (gateway/accounting/journal.py, when configured): `commit()`, called before the
response's last byte, appends the record to this process's journal file; `submit()`, after the
response, buffers it as above. Once the store has a batch, its journal lines are released;
at start the journals of processes that died with records unwritten are replayed into the
store. At shutdown, records the store would not take stay in the journal (not dropped) for
the next start. A record the full journal (`journal_max_bytes`) refuses is dropped and counted.

Quality scores (`attach_quality`) go through the same FIFO as records, so they can't overtake
the record they belong to: a record still buffered is updated in place; one being written is
followed by an update item; one already stored is updated directly (or queued while the store
is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

from gateway.accounting.journal import Journal, claim
from gateway.accounting.metrics import Metrics
from gateway.accounting.records import RequestRecord
from gateway.accounting.store.base import QualitySource, Store, StoreError, check_source
from gateway.config import StoreConfig

log = logging.getLogger("tollgate.recorder")

AttachStatus = Literal["attached", "queued", "unknown", "disabled"]

# A writer that has fallen behind takes this many batches in one write. On a saturated core
# each write waits several event-loop turns of tens of ms, so a batch-sized write capped the
# writer at a few hundred records/s while 2,000 requests/s arrived, and the buffer overflowed.
CATCH_UP_BATCHES = 32


@dataclass(slots=True)
class QualityUpdate:
    request_id: str
    source: QualitySource
    score: float


@dataclass(slots=True)
class Attached:
    """Outcome of attach_quality.

    status: "attached" (record updated, in the buffer or the store), "queued" (the store is
    down; the update will be applied when it is back, if the record exists), "unknown" (no
    record with that id), "disabled" (no store configured). model: the record's model when
    known.
    """

    status: AttachStatus
    model: str | None = None


_Item = RequestRecord | QualityUpdate


class Recorder:
    def __init__(
        self,
        store: Store | None,
        cfg: StoreConfig,
        metrics: Metrics,
        journal: Journal | None = None,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.metrics = metrics
        self.journal = journal if store is not None else None
        self._refused: set[str] = set()  # request ids the full journal refused
        self._replay_due = self.journal is not None
        self._buf: deque[_Item] = deque()
        self._since = 0.0  # monotonic time the oldest buffered item arrived (about)
        self._inflight: list[_Item] = []
        self._pending: dict[str, RequestRecord] = {}  # request_id -> record in _buf
        self._writing: set[str] = set()  # request_ids in the batch being written
        self._updates_waiting = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._opened = False
        self.submitted = 0
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store (retried in the background if it is down) and start the writer."""
        if self.store is None or self._task is not None:
            return
        if self.journal is not None:
            try:
                self.journal.open()
            except OSError as e:
                log.error("record journal at %s unavailable: %s", self.journal.prefix, e)
                self.journal = None
                self._replay_due = False
        if await self._try_open() and self._replay_due:
            await self._replay()
        self._task = asyncio.create_task(self._run(), name="tollgate-recorder")

    async def close(self, timeout: float = 10.0) -> None:
        """Write everything buffered, waiting at most `timeout` s; count the rest as dropped."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        left = len(self._buf) + len(self._inflight)
        if left:
            j = self.journal
            kept = 0
            if j is not None:
                kept = sum(
                    1 for it in (*self._buf, *self._inflight)
                    if isinstance(it, RequestRecord) and j.holds(it.request_id)
                )  # fmt: skip
            if kept:
                assert j is not None
                log.error(
                    "store still failing at shutdown: %d records stay in the journal %s* "
                    "and are written at the next start",
                    kept,
                    j.prefix,
                )
            if left - kept:
                log.error(
                    "store still failing at shutdown: dropping %d buffered items", left - kept
                )
                self._drop(left - kept)
            self._buf.clear()
            self._inflight = []
            self._pending.clear()
            self._writing.clear()
            self._updates_waiting = 0
        self._closed = True
        if self.journal is not None:
            self.journal.close()
        self.metrics.store_queue_depth(0)
        if self.store is not None and self._opened:
            with contextlib.suppress(Exception):
                await self.store.close()
            self._opened = False

    @property
    def queue_depth(self) -> int:
        return len(self._buf) + len(self._inflight)

    # -- request path -----------------------------------------------------------------------
    def commit(self, record: RequestRecord) -> None:
        """Journal a final record, before its response's last byte (see the module doc). A
        few microseconds; never blocks on the store, never raises."""
        j = self.journal
        if j is None:
            return
        try:
            if not j.append(record) and j.full:
                self._refused.add(record.request_id)  # dropped, and counted, at submit()
        except Exception:  # pragma: no cover - the request path must never see this
            log.exception("recorder.commit failed")

    def submit(self, record: RequestRecord) -> None:
        """Buffer one record for writing. O(1); never blocks, never raises."""
        try:
            if self.store is None:
                return
            self.submitted += 1
            if self._refused and record.request_id in self._refused:
                self._refused.discard(record.request_id)
                self._drop(1)
                return
            if not self._accept(record):
                if self.journal is not None:
                    self.journal.forget(record.request_id)
                return
            self._pending[record.request_id] = record
        except Exception:  # pragma: no cover - the request path must never see this
            log.exception("recorder.submit failed")

    def _accept(self, item: _Item) -> bool:
        # Full, or closed (nothing would write it): drop the newcomer, and count it.
        if self._closed or len(self._buf) + len(self._inflight) >= self.cfg.queue_size:
            self._drop(1)
            return False
        if not self._buf:
            self._since = time.monotonic()
        self._buf.append(item)
        if len(self._buf) >= self.cfg.batch_size:
            self._wake.set()
        return True

    def _drop(self, n: int) -> None:
        self.dropped += n
        self.metrics.dropped(n)

    # -- quality ----------------------------------------------------------------------------
    def buffered(self, request_id: str) -> RequestRecord | None:
        """The record of `request_id` while it is still on its way to the store."""
        rec = self._pending.get(request_id)
        if rec is None and request_id in self._writing:
            for r in self._inflight:
                if isinstance(r, RequestRecord) and r.request_id == request_id:
                    return r
        return rec

    async def attach_quality(
        self, request_id: str, source: QualitySource, score: float
    ) -> Attached:
        """Attach a feedback or judge score to a record wherever it currently is."""
        check_source(source)
        if self.store is None:
            return Attached("disabled")
        score = float(score)
        rec = self._pending.get(request_id)
        if rec is not None:  # still buffered and not yet serialized: update in place
            setattr(rec, f"quality_{source}", score)
            return Attached("attached", rec.model)
        if request_id in self._writing:  # being written now: follow it through the FIFO
            return self._queue_update(request_id, source, score, "attached")
        if self._updates_waiting:  # earlier updates wait for the store: keep their order
            return self._queue_update(request_id, source, score, "queued")
        try:
            found = await self.store.get(request_id)
            if found is None:
                return Attached("unknown")
            if not await self.store.set_quality(request_id, source, score):
                return Attached("unknown")  # pragma: no cover - expired between the calls
            return Attached("attached", found.model)
        except StoreError as e:
            self.last_error = str(e)
            return self._queue_update(request_id, source, score, "queued")

    def _queue_update(
        self, request_id: str, source: QualitySource, score: float, status: AttachStatus
    ) -> Attached:
        if not self._accept(QualityUpdate(request_id, source, score)):
            raise StoreError("the store buffer is full; the score was dropped")
        self._updates_waiting += 1
        self._wake.set()
        return Attached(status)

    # -- writer -----------------------------------------------------------------------------
    async def _try_open(self) -> bool:
        assert self.store is not None
        if self._opened:
            return True
        try:
            await self.store.open()
            self._opened = True
            return True
        except Exception as e:
            self.last_error = str(e)
            log.warning("store %s unavailable, buffering: %s", self.store.name, e)
            return False

    def _due_in(self) -> float:
        """Seconds until the buffer should be written: 0 for a full batch, a quality update,
        a batch being retried or close(); else when the oldest record has waited
        flush_interval_s. (Writing whatever arrived during the last write, at once, made a
        trickle of 1-3 record transactions under light load, each paying the thread handoff
        and the commit.)"""
        cfg = self.cfg
        buf = self._buf
        if self._inflight or self._closing or self._updates_waiting:
            return 0.0
        if len(buf) >= cfg.batch_size:
            return 0.0
        if not buf:
            return cfg.flush_interval_s
        return max(0.0, cfg.flush_interval_s - (time.monotonic() - self._since))

    async def _run(self) -> None:
        cfg = self.cfg
        while True:
            empty = not self._buf and not self._inflight
            if empty and self._closing:
                return
            delay = self._due_in()
            if delay > 0 or empty:
                self._wake.clear()
                # Woken early by a full batch, a quality update or close().
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay or cfg.flush_interval_s)
                continue
            self.metrics.store_queue_depth(self.queue_depth)
            ok = await self._write_some()
            self.metrics.store_queue_depth(self.queue_depth)
            if not ok:
                await self._sleep_until_closing(cfg.retry_interval_s)

    async def _sleep_until_closing(self, seconds: float) -> None:
        # While closing, retry at a quicker pace but still back off a little.
        await asyncio.sleep(min(seconds, 0.05) if self._closing else seconds)

    def _take(self) -> None:
        """Move the next batch into _inflight: a run of records, or one quality update. A
        writer that is behind takes up to CATCH_UP_BATCHES batches at once."""
        if self._inflight or not self._buf:
            return
        if isinstance(self._buf[0], QualityUpdate):
            self._inflight = [self._buf.popleft()]
            return
        size = self.cfg.batch_size * (CATCH_UP_BATCHES if self._behind() else 1)
        batch: list[_Item] = []
        while self._buf and len(batch) < size:
            if isinstance(self._buf[0], QualityUpdate):
                break
            rec = self._buf.popleft()
            assert isinstance(rec, RequestRecord)
            self._pending.pop(rec.request_id, None)
            self._writing.add(rec.request_id)
            batch.append(rec)
        self._inflight = batch
        if self._buf:  # what is left waits a flush interval from now, at most
            self._since = time.monotonic()

    def _behind(self) -> bool:
        """True when the writer is not keeping up (three full batches wait) or the gateway is
        closing: write more at once."""
        return self._closing or len(self._buf) >= 3 * self.cfg.batch_size

    async def _replay(self) -> bool:
        """Write the journals of processes that stopped with records unwritten into the
        store (it skips the ones it has), then delete them. False when the store failed."""
        assert self.store is not None and self.journal is not None
        n = files = 0
        for path in self.journal.orphans():
            c = claim(path)
            if c is None:  # a live process's, or replayed by another worker meanwhile
                continue
            try:
                recs, bad = c.records()
                for i in range(0, len(recs), 256):
                    await self.store.write_batch(recs[i : i + 256])
            except Exception as e:
                c.release()
                self.last_error = str(e)
                log.warning("replaying the record journal %s failed, kept: %s", path, e)
                return False
            c.done()
            n += len(recs)
            files += 1
            if bad:
                log.warning("record journal %s: %d unreadable lines skipped", path, bad)
        if files:
            log.info("replayed %d journaled records from %d files into the store", n, files)
        self._replay_due = False
        return True

    async def _write_some(self) -> bool:
        assert self.store is not None
        if not await self._try_open():
            return False
        if self._replay_due and not await self._replay():
            return False
        self._take()
        batch = self._inflight
        try:
            first = batch[0]
            if isinstance(first, QualityUpdate):
                found = await self.store.set_quality(first.request_id, first.source, first.score)
                if not found:
                    log.warning(
                        "quality score for unknown request id %r not stored", first.request_id
                    )
                self._updates_waiting -= 1
            else:
                recs = [r for r in batch if isinstance(r, RequestRecord)]
                await self.store.write_batch(recs)
                self.written += len(recs)
                for r in recs:
                    self._writing.discard(r.request_id)
                if self.journal is not None:
                    self.journal.stored(r.request_id for r in recs)
        except Exception as e:
            self.last_error = str(e)
            log.warning(
                "store %s write failed, %d items buffered: %s",
                self.store.name,
                self.queue_depth,
                e,
            )
            return False
        self._inflight = []
        return True
