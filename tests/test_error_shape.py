"""One error shape on every endpoint: each route, probed with no key and with junk."""

from __future__ import annotations

import re

import httpx
import pytest

from conftest import RunningServer

JUNK_BODIES: list[dict] = [
    {"content": b"", "headers": {"content-type": "application/json"}},
    {"content": b"\x00\xff{{", "headers": {"content-type": "application/json"}},
    {"json": {"unexpected": True}},
    {"json": [1, 2, 3]},
    {"content": b"--x\r\n\r\n", "headers": {"content-type": "multipart/form-data; boundary=x"}},
    {"content": b"a=b", "headers": {"content-type": "application/x-www-form-urlencoded"}},
]


def routes(server: RunningServer) -> list[tuple[str, str]]:
    spec = server.client().get("/openapi.json").json()
    found = []
    for path, methods in spec["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        found += [(method.upper(), concrete) for method in methods]
    return found


def assert_shape(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.request.url, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"code", "message", "details"}
        assert re.fullmatch(r"[a-z_]+", body["error"]["code"])


def test_every_v1_route_needs_a_key(server: RunningServer) -> None:
    checked = 0
    for method, path in routes(server):
        if not path.startswith("/v1/"):
            continue
        response = server.client().request(method, path)
        assert response.status_code == 401, (method, path)
        assert_shape(response)
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("junk", range(len(JUNK_BODIES)))
def test_junk_never_gets_a_500_or_another_shape(server: RunningServer, junk: int) -> None:
    client = server.client(server.admin_key)
    for method, path in routes(server):
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            assert_shape(client.request(method, path, **JUNK_BODIES[junk]))
        else:
            assert_shape(client.request(method, path + "?after=-1&limit=abc"))
    assert client.get("/healthz").status_code == 200
