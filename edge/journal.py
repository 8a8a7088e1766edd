"""The poll journal: each poll's readings, durable the moment the poll ends.

An append-only file beside the outbox. The pipeline appends one record per poll (one ``write``
call, no fsync: like the outbox's WAL commits it survives a killed process, not a power cut),
and the outbox records in its own transaction how far the telemetry batches it queued reach
(``batched_through``). A restarted gateway replays the records past that mark; once every
record is in a batch the file is truncated, so it holds at most one batch linger of polls.

Why not a table in the outbox: a SQLite commit per poll rewrote about five pages (the leaf,
the database header, the freelist) - some 20 KiB of writes and 35 us of CPU for 1.2 KiB of
readings. The journal writes the readings once.

Record: ``<length u32> <crc32 u32> <seq u64> <readings u32> <payload>``, the CRC over seq,
readings and payload. A record cut short by a kill, or one that fails its CRC, ends the
journal: it and anything after it are discarded (and the file is cut back to the last good
record so new polls never follow garbage).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_FRAME = struct.Struct("<II")  # payload length, CRC32 of what follows the frame
_META = struct.Struct("<QI")  # sequence number, readings
_HEAD = _FRAME.size + _META.size


@dataclass(frozen=True, slots=True)
class Staged:
    """One poll's readings, kept until a telemetry batch carries them."""

    id: int  # the journal's sequence number, increasing
    readings: int
    payload: bytes  # the readings as JSON objects separated by commas, without brackets


def encode(poll: Staged) -> bytes:
    body = _META.pack(poll.id, poll.readings) + poll.payload
    return _FRAME.pack(len(poll.payload), zlib.crc32(body)) + body


def decode(data: bytes) -> tuple[list[Staged], int]:
    """The intact records at the start of ``data``, and how many bytes they take."""
    polls: list[Staged] = []
    at = 0
    for poll, end in _records(data):
        polls.append(poll)
        at = end
    return polls, at


def _records(data: bytes) -> Iterator[tuple[Staged, int]]:
    at = 0
    while at + _HEAD <= len(data):
        length, crc = _FRAME.unpack_from(data, at)
        end = at + _HEAD + length
        if end > len(data) or zlib.crc32(data[at + _FRAME.size : end]) != crc:
            return  # torn or damaged: the journal ends here
        seq, readings = _META.unpack_from(data, at + _FRAME.size)
        yield Staged(seq, readings, data[at + _HEAD : end]), end
        at = end


class PollJournal:
    """The file; ``recovered`` holds the polls a killed predecessor never batched."""

    def __init__(self, path: Path, batched_through: int) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with open(path, "rb") as f:
            polls, good = decode(f.read())
        if good != os.fstat(self.fd).st_size:
            os.ftruncate(self.fd, good)  # a torn tail: new records must not follow it
        self.recovered = [p for p in polls if p.id > batched_through]
        self.seq = max([batched_through, *(p.id for p in polls)])
        self.size = good

    def append(self, payload: bytes, readings: int) -> Staged:
        poll = Staged(self.seq + 1, readings, payload)
        data = encode(poll)
        record = memoryview(data)
        try:
            while record:  # a regular file takes it whole unless the disk is full (that raises)
                record = record[os.write(self.fd, record) :]
        except OSError:
            os.ftruncate(self.fd, self.size)  # no torn record for the next one to follow
            raise
        self.size += len(data)
        self.seq = poll.id  # only now: after a failed write, truncation still sees the last one
        return poll

    def clear(self) -> None:
        """Every record is in a committed batch: start the file again."""
        os.ftruncate(self.fd, 0)
        self.size = 0
        self.recovered = []

    def close(self) -> None:
        os.close(self.fd)
