"""``gridwatch health``: what is unhealthy in the field, from the registry API.

Exit status: 0 when everything listed is healthy, 1 when something is not, 2 for a URL that is
no URL, 3 when the registry cannot be reached (or refuses the token), so scripts and monitoring
can act on it. It talks to the registry through the installer's client (``installer.Api``): the
same options, the same one-line errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, TextIO

from gridwatch.top.installer import TOKEN_ENV, URL_HELP, Api, BadOption, Refused, Unreachable

HEALTHY, UNHEALTHY, UNREACHABLE = 0, 1, 3
USAGE = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help=URL_HELP)
    p.add_argument("--token", default=None, help=f"API token (default: env {TOKEN_ENV})")
    p.add_argument("--token-env", default=TOKEN_ENV, help="env var holding the API token")
    p.add_argument("--ca-file", default=None, help="CA that signed the API's certificate")
    for name in ("district", "grid", "gateway", "profile"):
        p.add_argument(f"--{name}", default=None, help=f"only this {name}")
    p.add_argument("--all", action="store_true", help="list healthy devices too")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.add_argument("--timeout", type=float, default=10.0)


async def fetch(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    query = {k: getattr(args, k) for k in ("district", "grid", "gateway", "profile")}
    params = {k: v for k, v in query.items() if v is not None}
    async with Api(args, token_env=args.token_env) as api:
        body: dict[str, Any] = await api.call(
            "GET",
            "/api/v1/health",
            params=params,
            timeout=aiohttp.ClientTimeout(total=args.timeout),
        )
        return body


def render(report: dict[str, Any], show_all: bool, out: TextIO) -> None:
    gateways = [g for g in report["gateways"] if show_all or not g["healthy"]]
    devices = [d for d in report["devices"] if show_all or not d["healthy"]]
    for g in gateways:
        why = "; ".join(g["reasons"]) or "ok"
        print(f"gateway {g['id']:<24} {g['status']:<8} {why}", file=out)
    last = None
    for d in devices:
        where = (d["district"] or "-", d["grid"] or "-")
        if where != last:
            print(f"\n{where[0]} / {where[1]}", file=out)
            last = where
        why = "; ".join(d["reasons"]) or "ok"
        print(f"  {d['id']:<28} {d['status']:<8} {why}", file=out)
    total = len(report["devices"])
    print(f"\n{report['unhealthy']} unhealthy ({total} devices, "
          f"{len(report['gateways'])} gateways checked)", file=out)  # fmt: skip


def main(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(fetch(args))
    except BadOption as exc:
        print(f"gridwatch: {exc}", file=sys.stderr)
        return USAGE
    except (Refused, Unreachable, OSError) as exc:  # OSError: a CA file that cannot be read
        print(f"gridwatch: {exc}", file=sys.stderr)
        return UNREACHABLE
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render(report, args.all, sys.stdout)
    return HEALTHY if report["healthy"] else UNHEALTHY
