"""Files gridwatch ships inside its packages, found with ``importlib.resources``.

Profiles, gateway configs and the catalogue (``firmware_configs``), the dashboard's static files and
the registry's migrations are package data: they are wherever the package is, in a checkout, an
editable install or a wheel installed by pip. Their readers (YAML loaders, aiohttp's file responses,
alembic's script directory) need real paths, so a package imported from a zip is refused with a
message rather than half-working.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import firmware_configs


def shipped(package: str, *parts: str) -> Path:
    """The file or folder ``parts`` inside ``package``, as an absolute path on disk."""
    found = files(package).joinpath(*parts)
    where = "/".join((package.replace(".", "/"), *parts))
    if not isinstance(found, Path):
        raise FileNotFoundError(
            f"gridwatch's shipped {where} is inside an archive ({found}); "
            "install gridwatch as files (pip install, not a zip)"
        )
    if not found.exists():
        raise FileNotFoundError(f"gridwatch's shipped {where} is missing at {found}: reinstall it")
    return found.resolve()


def firmware(folder: str) -> Path:
    """One folder of the shipped ``firmware_configs`` (``firmware_configs.PROFILES`` and so on)."""
    if folder not in firmware_configs.FOLDERS:
        raise ValueError(f"firmware_configs has no folder {folder!r}: {firmware_configs.FOLDERS}")
    return shipped("firmware_configs", folder)
