"""``make bench``: every benchmark once with its defaults, one after the other (about 7 minutes).

Each prints its own figures and the machine; a benchmark that fails is reported and the rest
still run. The exit status is 1 if any failed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES: list[list[str]] = [
    ["bench/edge_bench.py", "--duration", "20"],
    ["-m", "bench.rtu_bench"],
    ["-m", "bench.replay_bench"],
    ["-m", "bench.replay_e2e_bench"],
    ["-m", "bench.reconnect_bench"],
    ["-m", "bench.alert_latency_bench", "--rounds", "60"],
    ["-m", "bench.bridge_bench", "--batches", "1600"],
    ["-m", "bench.bridge_bench", "--batches", "1600", "--bridges", "2"],
    ["-m", "bench.registry_bench"],
    ["-m", "bench.delivery_bench"],
]


def main() -> int:
    failed = []
    for args in BENCHES:
        name = " ".join(args)
        print(f"\n=== {name}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, *args], cwd=ROOT)
        print(f"=== {name}: exit {rc} after {time.monotonic() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
