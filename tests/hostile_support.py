"""Helpers for the hostile-request tests: the error-shape check with its echo
bounds, raw HTTP for what httpx cannot do (stop sending halfway), and the JSON
routes with a valid body each."""

from __future__ import annotations

import json
import re
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx

from conftest import RunningServer

JSON = {"content-type": "application/json"}
ORIGINAL = "f8f8f0cce0f4e84d0e370a22028f67f0b36e2ed596623e1d33e6339c4e9c9b22"

# Every route that reads a JSON body, with a body it would take (aimed at media
# and members that do not exist, so that a valid body changes nothing).
JSON_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/match", {"signals": [{"type": "pdq", "value": ORIGINAL}]}),
    ("POST", "/v1/match/batch", {"queries": [{"id": 1, "type": "pdq", "value": ORIGINAL}]}),
    ("POST", "/v1/hashes", {"items": [{"type": "pdq", "value": ORIGINAL,
                                       "labels": ["other-illegal"], "note": "n"}]}),
    ("POST", "/v1/members", {"name": "corpus-member", "trusted_flagger": False}),
    ("PATCH", "/v1/members/nobody", {"trusted_flagger": True, "reason": "r"}),
    ("POST", "/v1/members/nobody/keys", {"roles": ["matcher"]}),
    ("DELETE", "/v1/media/999999", {"reason": "r"}),
    ("POST", "/v1/media/999999/feedback", {"verdict": "disagree", "reason": "r"}),
    ("POST", "/v1/media/999999/resolution", {"action": "disable", "reason": "r"}),
]


def alive(server: RunningServer) -> None:
    assert server.client().get("/healthz", timeout=5).status_code == 200


def flipped(hex_value: str, bits: list[int] | range) -> str:
    raw = bytearray(bytes.fromhex(hex_value))
    for b in bits:
        raw[b // 8] ^= 0x80 >> (b % 8)
    return raw.hex()


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _lists(value: Any) -> list[list[Any]]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _lists(v)]
    if isinstance(value, list):
        return [value, *(x for v in value for x in _lists(v))]
    return []


def assert_refused(response: httpx.Response, status: int | None = None,
                   code: str | None = None) -> dict[str, Any]:
    """A 4xx in the one error shape, echoing little of the request: a message of at
    most 200 characters (plus an ellipsis), strings in details of at most 100,
    lists of at most 50 items."""
    where = f"{response.request.method} {str(response.request.url)[:120]}"
    assert 400 <= response.status_code < 500, (where, response.status_code, response.text[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert re.fullmatch(r"[a-z_]+", error["code"]) and error["message"]
    assert len(error["message"]) <= 203, (where, len(error["message"]))
    assert all(len(s) <= 103 for s in _strings(error["details"])), (where, error["details"])
    assert all(len(items) <= 50 for items in _lists(error["details"])), where
    if status is not None:
        assert response.status_code == status, (where, response.text[:500])
    if code is not None:
        assert error["code"] == code, (where, error)
    return dict(error)


def raw_exchange(url: str, head: str, body: bytes = b"", wait: float = 10.0
                 ) -> tuple[int, dict[str, Any]]:
    """Sends a request head and `body` (all of it or only its start: the rest is
    never sent) and returns the status and JSON the server answers with meanwhile.
    A server that waits for the rest times out here instead of answering."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=wait) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"the server closed without answering: {data!r}"
            data += chunk
        header, _, rest = data.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)content-length: *(\d+)", header).group(1))  # type: ignore[union-attr]
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk, "the server closed mid-answer"
            rest += chunk
    return status, json.loads(rest[:length])


def chunked(data: bytes, size: int = 16_384) -> bytes:
    """`data` in HTTP/1.1 chunked framing, without the final empty chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size])
                    for i in range(0, len(data), size))
