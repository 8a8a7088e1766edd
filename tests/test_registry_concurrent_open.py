"""Several processes (bridges, registry APIs) start at once on one fresh registry database."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from device_registry import RegistryStore

OPEN = "import asyncio, sys; from device_registry import RegistryStore\n" \
       "async def main():\n    s = await RegistryStore.open(sys.argv[1])\n    await s.close()\n" \
       "asyncio.run(main())"  # fmt: skip


def open_at_once(url: str, n: int) -> list[tuple[int, str]]:
    """(exit code, stderr) of ``n`` processes that each open the store at ``url`` at once."""
    procs = [
        subprocess.Popen([sys.executable, "-c", OPEN, url], stderr=subprocess.PIPE)
        for _ in range(n)
    ]
    return [(p.wait(60), p.communicate()[1].decode()) for p in procs]


async def test_processes_opening_at_once_on_a_fresh_database_all_come_up(
    registry_url: str,
) -> None:
    url = registry_url
    results = await asyncio.to_thread(open_at_once, url, 4)
    assert [rc for rc, _ in results] == [0] * 4, [err for _, err in results]
    store = await RegistryStore.open(url)
    try:
        assert await store.gateways() == []
    finally:
        await store.close()


async def test_stores_opening_at_once_in_one_process(pg_url: str) -> None:
    stores = await asyncio.gather(*(RegistryStore.open(pg_url) for _ in range(4)))
    for s in stores:
        await s.close()
