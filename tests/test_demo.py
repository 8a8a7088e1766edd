"""The README's `gridwatch demo`, run as a newcomer would: it shows an alert, and Ctrl-C stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.timeout(180)
def test_demo_shows_a_flood_alert_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gridwatch.top.cli",
            "demo",
            "--workdir",
            str(tmp_path),
            "--speedup",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    seen: list[str] = []
    started = time.monotonic()
    try:
        for line in proc.stdout:  # the demo's own output, as the newcomer sees it
            seen.append(line)
            if "ALERT RAISED" in line:
                break
            assert time.monotonic() - started < 120, "".join(seen)
        else:
            raise AssertionError("demo ended without an alert:\n" + "".join(seen))
        raised_after = time.monotonic() - started
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(seen)
    assert "dashboard       http://127.0.0.1:" in out and "log in with token" in out
    assert "040401" in seen[-1] and "wl-00" in seen[-1]
    assert "stopping..." in rest
    assert proc.returncode == 0, rest
    print(f"first alert after {raised_after:.1f}s at speedup 4")
    for name in ("central", "sim", "edge"):
        log = (tmp_path / f"{name}.log").read_text()
        assert "Traceback" not in log, f"{name}.log:\n{log[-3000:]}"
