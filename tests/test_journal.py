"""The poll journal: what a killed gateway left behind is read back exactly, never twice."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from edge.journal import PollJournal, Staged, decode, encode

POLLS = [Staged(i, 2, b'{"device":"d","point":"p%d"}' % i) for i in range(1, 5)]
WHOLE = b"".join(encode(p) for p in POLLS)
LAST = len(encode(POLLS[-1]))


# (bytes on disk, polls read back)
DECODE_TABLE: list[tuple[str, bytes, list[Staged]]] = [
    ("empty", b"", []),
    ("intact", WHOLE, POLLS),
    *[(f"last record cut after {n} bytes", WHOLE[: len(WHOLE) - LAST + n], POLLS[:3])
      for n in (1, 7, 8, 19, 20, LAST - 1)],
    ("a flipped bit in the third payload",
     WHOLE.replace(b'"p3"', b'"q3"'), POLLS[:2]),
    ("garbage after the last record", WHOLE + b"\x00" * 5, POLLS),
]  # fmt: skip


@pytest.mark.parametrize(("data", "expected"), [t[1:] for t in DECODE_TABLE],
                         ids=[t[0] for t in DECODE_TABLE])  # fmt: skip
def test_decode_keeps_the_intact_records_before_any_damage(
    data: bytes, expected: list[Staged]
) -> None:
    polls, good = decode(data)
    assert polls == expected
    assert good == sum(len(encode(p)) for p in expected)


@pytest.mark.parametrize(
    ("batched_through", "recovered", "next_seq"),
    [(0, [1, 2, 3, 4], 5), (2, [3, 4], 5), (4, [], 5), (9, [], 10)],
)
def test_reopen_recovers_what_no_batch_carries_and_counts_on(
    tmp_path: Path, batched_through: int, recovered: list[int], next_seq: int
) -> None:
    path = tmp_path / "o.db-polls"
    path.write_bytes(WHOLE)
    journal = PollJournal(path, batched_through)
    assert [p.id for p in journal.recovered] == recovered
    assert journal.append(b"{}", 1).id == next_seq


def test_a_torn_tail_is_cut_so_new_polls_follow_the_good_ones(tmp_path: Path) -> None:
    path = tmp_path / "o.db-polls"
    path.write_bytes(WHOLE[:-3])  # killed in the middle of writing poll 4
    journal = PollJournal(path, 0)
    assert [p.id for p in journal.recovered] == [1, 2, 3]
    journal.append(b'{"new":1}', 1)
    journal.close()
    assert [p.id for p in PollJournal(path, 0).recovered] == [1, 2, 3, 4]


def test_clear_empties_the_file_and_the_sequence_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "o.db-polls"
    journal = PollJournal(path, 0)
    for _ in range(3):
        journal.append(b"{}", 1)
    journal.clear()
    assert path.stat().st_size == 0
    assert journal.append(b"{}", 1).id == 4
    journal.close()
    assert [p.id for p in PollJournal(path, 3).recovered] == [4]


def test_a_failed_write_leaves_no_torn_record_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "o.db-polls"
    journal = PollJournal(path, 0)
    journal.append(b'{"a":1}', 1)
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[:5]))  # part of the record reaches the file, then ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("edge.journal.os.write", disk_full)
    with pytest.raises(OSError):
        journal.append(b'{"b":2}', 1)
    assert journal.seq == 1  # the last record written: batching up to it still empties the file
    monkeypatch.undo()
    journal.append(b'{"c":3}', 1)
    journal.close()
    assert [p.payload for p in PollJournal(path, 0).recovered] == [b'{"a":1}', b'{"c":3}']
