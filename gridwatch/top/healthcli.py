"""``gridwatch health``: what is unhealthy in the field, from the registry API.

Exit status: 0 when everything listed is healthy, 1 when something is not, 3 when the registry
cannot be reached (or refuses the token), so scripts and monitoring can act on it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TextIO

TOKEN_ENV = "GRIDWATCH_TOKEN"
HEALTHY, UNHEALTHY, UNREACHABLE = 0, 1, 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("GRIDWATCH_URL", "http://127.0.0.1:8080"),
                   help="registry API base URL (env GRIDWATCH_URL)")  # fmt: skip
    p.add_argument("--token-env", default=TOKEN_ENV, help="env var holding the API token")
    for name in ("district", "grid", "gateway", "profile"):
        p.add_argument(f"--{name}", default=None, help=f"only this {name}")
    p.add_argument("--all", action="store_true", help="list healthy devices too")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.add_argument("--timeout", type=float, default=10.0)


def fetch(args: argparse.Namespace) -> dict[str, Any]:
    query = {k: getattr(args, k) for k in ("district", "grid", "gateway", "profile")}
    params = {k: v for k, v in query.items() if v is not None}
    url = f"{args.url.rstrip('/')}/api/v1/health?{urllib.parse.urlencode(params)}"
    req = urllib.request.Request(url)
    token = os.environ.get(args.token_env)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=args.timeout) as r:
        body: dict[str, Any] = json.loads(r.read())
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


def _problem(exc: urllib.error.HTTPError) -> str:
    """The registry's problem answer (RFC 9457) in one line: its title and detail."""
    text = exc.read().decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text[:500]
    if not isinstance(body, dict):
        return text[:500]
    return f"{body.get('title', '')}: {body.get('detail', '')}"[:500]


def main(args: argparse.Namespace) -> int:
    try:
        report = fetch(args)
    except urllib.error.HTTPError as exc:
        print(f"registry at {args.url} refused: HTTP {exc.code} {_problem(exc)}", file=sys.stderr)
        return UNREACHABLE
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"registry at {args.url} cannot be reached: {exc}", file=sys.stderr)
        return UNREACHABLE
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render(report, args.all, sys.stdout)
    return HEALTHY if report["healthy"] else UNHEALTHY
