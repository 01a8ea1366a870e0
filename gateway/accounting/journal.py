"""The record journal: each request's record on local disk before its response's last byte.

The recorder writes records to the store in batches, after the response; a gateway killed in
between (kill -9, OOM) would lose what it had buffered. So the proxy hands each final record
to `Journal.append` first: one orjson line, `os.write` on an O_APPEND file descriptor, no
fsync (the page cache survives the death of the process; a power cut is out of scope).

Files: each process appends to its own segments, `<journal_path>-<pid>-<token>-<n>.jsonl`,
and holds an exclusive `flock` on each while it lives. At start the recorder replays every
segment nobody holds (a killed process's, whatever worker it was) into the store, which skips
request ids it already has (records flushed before the kill are not counted twice), then
deletes them.

A segment is deleted once the store has every record in it, the one being written to is
truncated when the store has all of it, and it is replaced by a new one once it passes
`journal_max_bytes / 8`. While the store is down the segments grow: past `journal_max_bytes`
(per process) a record is not journaled and the recorder drops it, counted in
tollgate_store_dropped_records_total like a full buffer.

Not journaled: quality scores and the judge's own calls. With the judge on, the prompt vector
of an unrouted request is added after the response, so a replayed copy of it has none.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import orjson

from gateway.accounting.records import RequestRecord
from gateway.accounting.store.base import record_from_dict
from gateway.config import StoreConfig

log = logging.getLogger("tollgate.journal")

SUFFIX = ".jsonl"


class _Segment:
    __slots__ = ("fd", "path", "pending", "size")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new name: nobody else has it
        self.size = 0
        self.pending = 0  # records appended here that the store does not have yet

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)


class Journal:
    """This process's append-only record journal (see the module doc)."""

    def __init__(self, prefix: str | os.PathLike[str], max_bytes: int) -> None:
        self.prefix = Path(prefix)
        self.max_bytes = max_bytes
        self.segment_bytes = max(64 * 1024, max_bytes // 8)
        self._segments: list[_Segment] = []  # oldest first; the last one is written to
        self._where: dict[str, _Segment] = {}  # request id -> its segment, until stored
        self._size = 0  # bytes in this process's segments
        self._name = ""
        self._n = 0
        self.failed = False  # a write failed (disk full): logged once

    # -- this process's segments ------------------------------------------------------------
    def open(self) -> None:
        """Create this process's first segment (and the folder)."""
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._name = f"{self.prefix.name}-{os.getpid()}-{secrets.token_hex(3)}"
        self._segments = [self._new_segment()]

    def _new_segment(self) -> _Segment:
        self._n += 1
        return _Segment(self.prefix.with_name(f"{self._name}-{self._n}{SUFFIX}"))

    @property
    def full(self) -> bool:
        return self._size >= self.max_bytes

    def append(self, rec: RequestRecord) -> bool:
        """Journal one record; False when it was not (the journal is full, or not open)."""
        if not self._segments or self._size >= self.max_bytes:
            return False
        line = orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE)
        seg = self._segments[-1]
        try:
            os.write(seg.fd, line)
        except OSError as e:
            if not self.failed:
                self.failed = True
                log.error("record journal %s: write failed (%s); not journaling", seg.path, e)
            return False
        seg.size += len(line)
        seg.pending += 1
        self._size += len(line)
        self._where[rec.request_id] = seg
        return True

    def stored(self, request_ids: Iterable[str]) -> None:
        """The store has these records: their segments can go once all theirs are stored."""
        where = self._where
        for rid in request_ids:
            seg = where.pop(rid, None)
            if seg is not None:
                seg.pending -= 1
        segs = self._segments
        while len(segs) > 1 and segs[0].pending <= 0:
            self._size -= segs[0].size
            segs.pop(0).remove()
        if not segs:
            return
        head = segs[-1]
        if len(segs) == 1 and head.pending <= 0 and head.size:
            with contextlib.suppress(OSError):  # everything is stored: start the file over
                os.ftruncate(head.fd, 0)
                self._size -= head.size
                head.size = 0
        if head.size >= self.segment_bytes:
            try:
                segs.append(self._new_segment())
            except OSError as e:  # keep writing to the old one
                log.warning("record journal: cannot start a new segment: %s", e)

    def holds(self, request_id: str) -> bool:
        """Whether a record the store does not have yet is in this journal."""
        return request_id in self._where

    def forget(self, request_id: str) -> None:
        """A journaled record the recorder dropped: it no longer holds its segment back."""
        seg = self._where.pop(request_id, None)
        if seg is not None:
            seg.pending -= 1

    def close(self) -> int:
        """Close this process's segments; those with records the store lacks stay for the
        next start to replay. The number of those records."""
        left = sum(s.pending for s in self._segments)
        for s in self._segments:
            if s.pending > 0:
                os.close(s.fd)
            else:
                s.remove()
        self._segments = []
        self._where.clear()
        self._size = 0
        return left

    # -- other processes' segments --------------------------------------------------------
    def orphans(self) -> list[Path]:
        """Segments under this prefix that are not this process's."""
        mine = {s.path for s in self._segments}
        found = self.prefix.parent.glob(f"{self.prefix.name}-*{SUFFIX}")
        return sorted(p for p in found if p not in mine)


class Claimed:
    """A segment of a process that is gone, locked by this one while it is replayed."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    def records(self) -> tuple[list[RequestRecord], int]:
        """Its records, and how many lines could not be read (a line cut by the kill)."""
        with os.fdopen(os.dup(self.fd), "rb") as f:
            data = f.read()
        out: list[RequestRecord] = []
        bad = 0
        for line in data.split(b"\n"):
            if not line:
                continue
            try:
                out.append(record_from_dict(orjson.loads(line)))
            except (orjson.JSONDecodeError, TypeError):
                bad += 1
        return out, bad

    def done(self) -> None:
        """Replayed: delete it."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)

    def release(self) -> None:
        """Not replayed (the store is down): leave it for later."""
        os.close(self.fd)


def claim(path: Path) -> Claimed | None:
    """Lock a segment whose process is gone; None when a live process holds it (or it was
    replayed and deleted meanwhile)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:  # deleted and recreated meanwhile
            raise OSError
    except OSError:
        os.close(fd)
        return None
    return Claimed(path, fd)


def journal_prefix(cfg: StoreConfig) -> Path | None:
    """Where this store's journal lives (`store.journal_path`, else next to the SQLite file,
    else under var/ named after the Redis or PostgreSQL URL); None when it is off
    (`store.journal: false`, no store, an in-memory SQLite)."""
    if not cfg.journal or cfg.backend == "none":
        return None
    if cfg.journal_path:
        return Path(cfg.journal_path).expanduser().absolute()
    if cfg.backend == "sqlite":
        if cfg.sqlite_path == ":memory:":
            return None
        return Path(cfg.sqlite_path + ".journal").expanduser().absolute()
    url = cfg.postgres_url if cfg.backend == "postgres" else cfg.redis_url
    tag = hashlib.sha256(url.encode()).hexdigest()[:12]
    return Path("var", f"tollgate-{cfg.backend}-{tag}.journal").absolute()


def make_journal(cfg: StoreConfig) -> Journal | None:
    """The configured journal, not yet opened (the recorder opens it); None when off."""
    prefix = journal_prefix(cfg)
    return None if prefix is None else Journal(prefix, cfg.journal_max_bytes)
