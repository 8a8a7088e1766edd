"""The browser's session: log in sets an HttpOnly cookie, log out clears it; a write that carries
the cookie is refused unless a page of this server sent it, in JSON (cross-site request forgery).
Bearer requests (machines) are not concerned. A pure table for the rule, then the real registry."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest

from device_registry import RegistryStore
from device_registry.http.app import build_app, serving
from device_registry.http.auth import COOKIE, SYSTEM, TokenRequest, cross_site, issue
from device_registry.http.auth import Role as R
from tests._ops_helpers import Registry, registry, smoke
from tests.tls import make_certs

HOST = "127.0.0.1:8080"
OURS = f"http://{HOST}"
JSON = "application/json"

# method, Origin, Referer, Content-Type, has a body -> refused (a word of the reason) or None
RULE = [
    ("GET", "https://evil.example", None, "", False, None),  # reads: SameSite's business
    ("HEAD", None, None, "", False, None),
    ("POST", OURS, None, JSON, True, None),
    ("POST", f"https://{HOST}", None, JSON, True, None),  # TLS ended by a proxy: host decides
    ("POST", OURS.upper(), None, JSON, True, None),
    ("POST", None, f"{OURS}/dashboard#/alerts", JSON, True, None),
    ("POST", OURS, None, "", False, None),  # no body, no type needed
    ("DELETE", OURS, None, "", False, None),
    ("POST", "https://evil.example", None, JSON, True, "evil.example"),
    ("POST", "http://127.0.0.1:9999", None, JSON, True, "9999"),  # same site, other port
    ("POST", "http://127.0.0.1", None, JSON, True, "refused"),
    ("POST", "null", None, JSON, True, "'null'"),  # sandboxed frame, data: URL
    ("POST", "https://evil.example", f"{OURS}/dashboard", JSON, True, "evil"),  # Origin wins
    ("POST", None, "https://evil.example/x", JSON, True, "evil"),
    ("POST", None, "http://[::1", JSON, True, "refused"),  # unparsable
    ("POST", None, None, JSON, True, "Origin or Referer"),
    ("PATCH", None, None, JSON, True, "Origin or Referer"),
    ("PUT", "https://evil.example", None, JSON, True, "evil"),
    ("DELETE", "https://evil.example", None, "", False, "evil"),
    ("POST", OURS, None, "text/plain", True, "text/plain"),
    ("POST", OURS, None, "application/x-www-form-urlencoded", True, "x-www-form"),
    ("POST", OURS, None, "multipart/form-data", True, "multipart"),
    ("POST", OURS, None, "", True, "no Content-Type"),
]


@pytest.mark.parametrize(("method", "origin", "referer", "ctype", "body", "refused"), RULE)
def test_the_cross_site_rule(
    method: str,
    origin: str | None,
    referer: str | None,
    ctype: str,
    body: bool,
    refused: str | None,
) -> None:
    why = cross_site(method, HOST, origin, referer, ctype, body)
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why, why


# the shapes a browser can be made to send by another page, and ours; against the real registry
# (who: "cookie" or "bearer"; origin: "self", "evil", or None; the body as sent)
SHAPES = [
    ("cookie", "self", JSON, b'{"note":"ok"}', 200),
    ("cookie", "self", "application/json; charset=utf-8", b'{"note":"ok"}', 200),
    ("cookie", "self", None, b"", 200),
    ("cookie", "evil", JSON, b'{"note":"forged"}', 403),
    ("cookie", "self", "text/plain", b'{"note":"forged"}', 403),
    ("cookie", "self", "application/x-www-form-urlencoded", b"note=forged", 403),
    ("cookie", "evil", "text/plain", b'{"note":"forged"}', 403),
    ("cookie", None, JSON, b'{"note":"forged"}', 403),
    ("bearer", "evil", "text/plain", b'{"note":"a machine"}', 200),
    ("bearer", None, JSON, b'{"note":"a machine"}', 200),
]


async def _file(reg: Registry, n: int, who: str, origin: str | None, ctype: str | None,
               body: bytes) -> tuple[int, str]:  # fmt: skip
    headers = {}
    if who == "cookie":
        headers["Cookie"] = f"{COOKIE}={reg.tokens[R.OPERATOR]}"
    else:
        headers.update(reg.auth(R.OPERATOR))
    if origin is not None:
        headers["Origin"] = reg.url if origin == "self" else "https://evil.example"
    if ctype is not None:
        headers["Content-Type"] = ctype
    async with reg.http.post(f"{reg.url}/api/v1/alerts/s{n}/file", data=body,
                             headers=headers) as r:  # fmt: skip
        return r.status, (await r.json()).get("detail", "")


async def test_forged_writes_are_refused_and_ours_pass(tmp_path: Path) -> None:
    async with registry(tmp_path) as reg:
        # a class the operator files by hand (a fire lane blocked): the centre files nothing itself
        by_hand = {"category": "050501"}
        await reg.ingest(*(smoke(f"s{n}", grid=f"G-{n}").model_copy(update=by_hand)
                           for n in range(len(SHAPES))))  # fmt: skip
        got = [await _file(reg, n, *shape[:4]) for n, shape in enumerate(SHAPES)]
        assert [status for status, _ in got] == [shape[4] for shape in SHAPES], got
        # a refusal says what is wrong, in words
        assert "from 'https://evil.example' is refused" in got[3][1]
        assert "must send its body as application/json, not text/plain" in got[4][1]
        # and a refused write changed nothing
        _, forged = await reg.call("GET", "/api/v1/alerts/s3", R.ADMIN)
        assert forged["stage"] == "reported" and forged["actions"] == []


async def test_log_in_sets_an_httponly_cookie_and_log_out_clears_it(tmp_path: Path) -> None:
    async with registry(tmp_path) as reg:
        url = f"{reg.url}/api/v1/session"
        own = {"Origin": reg.url}
        async with reg.http.post(url, json={"token": "nope"}, headers=own) as r:
            assert r.status == 401 and (await r.json())["detail"] == "unknown or revoked token"
            assert COOKIE not in r.cookies
        async with reg.http.post(url, json={"token": reg.tokens[R.MAINTENANCE]},
                                 headers={"Origin": "https://evil.example"}) as r:  # fmt: skip
            assert r.status == 403  # a login forged by another page (login CSRF)
        async with reg.http.post(url, data="token=x", headers=own) as r:
            assert r.status == 422
        async with reg.http.post(url, json={"token": reg.tokens[R.MAINTENANCE]}, headers=own) as r:
            assert r.status == 200
            who = await r.json()
            morsel = r.cookies[COOKIE]
        assert (who["name"], who["role"]) == ("maintenance-1", "maintenance")
        # what the page may offer this role: the middleware's own table, not a copy in the page
        assert {"GET /api/v1/health", "GET /api/v1/alerts/lifecycle"} <= set(who["may"])
        assert not {"POST /api/v1/alerts/{id}/file", "GET /api/v1/alerts/stream",
                    "POST /api/v1/alerts/close"} & set(who["may"])  # fmt: skip
        assert morsel.value == reg.tokens[R.MAINTENANCE]
        assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/"
        assert not morsel["secure"]  # plain HTTP: a browser would not keep a Secure cookie
        cookie = {"Cookie": f"{COOKIE}={morsel.value}"}
        async with reg.http.get(url, headers=cookie) as r:
            assert r.status == 200 and (await r.json())["role"] == "maintenance"
        async with reg.http.delete(url, headers={**cookie, "Origin": "https://evil.example"}) as r:
            assert r.status == 403  # another page cannot log the crew out either
        async with reg.http.delete(url, headers={**cookie, **own}) as r:
            assert r.status == 200
            gone = r.cookies[COOKIE]
        assert gone.value == "" and gone["max-age"] == "0"
        async with reg.http.get(url) as r:
            assert r.status == 401


async def test_over_tls_the_cookie_is_secure(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(certs.cert, certs.key)
    client = ssl.create_default_context(cafile=str(certs.ca))
    store = await RegistryStore.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    try:
        crew = await issue(store, TokenRequest(name="crew", role=R.MAINTENANCE), SYSTEM)
        app = build_app(store=store)
        async with serving(app, "127.0.0.1", 0, server) as url, aiohttp.ClientSession() as http:
            body, origin = {"token": crew.token}, {"Origin": url}
            async with http.post(f"{url}/api/v1/session", json=body, headers=origin,
                                 ssl=client) as r:  # fmt: skip
                assert r.status == 200
                morsel = r.cookies[COOKIE]
    finally:
        await store.close()
    assert morsel["secure"] and morsel["httponly"] and morsel["samesite"] == "Strict"
