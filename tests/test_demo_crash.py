"""A demo that is killed, not stopped (SIGKILL, an OOM kill), takes its child processes with it:
no platform, simulator or edge is left holding the ports and the state folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone while we looked
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's wait is missing


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_killed_demo_leaves_no_process_behind(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridwatch.top.cli", "demo", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    kids: list[int] = []
    try:
        for line in proc.stdout:  # the banner comes once all three parts have started
            if "a simulated district is running" in line:
                break
        kids = children(proc.pid)
        assert len(kids) == 3, kids  # central, sim, edge
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while any(running(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)  # polling /proc: there is no event for another process's exit
        left = [k for k in kids if running(k)]
        assert not left, f"still running after the demo was killed: {left}"
    finally:
        for k in kids:
            if running(k):
                os.kill(k, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
