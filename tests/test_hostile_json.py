"""A corpus of hostile JSON against every route that reads JSON, over real HTTP:
junk bytes, truncated and deeply nested JSON, lone surrogates, NUL, NaN and
Infinity, numbers past any range, wrong types in every field. Each is a 4xx in
the one error shape (echoing little of the request), and the server stays up.
Bodies over a route's cap are tests/test_hostile_requests.py."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import RunningServer
from hostile_support import JSON, JSON_ROUTES, alive, assert_refused


def _junk(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000))) for _ in range(3)]


INVALID_JSON = [b"\x00\xff{{", b"{", b'{"signals": [', b"[" * 10_000, b"{} {}", b"\xef\xbb\xbf{}",
                b"NaN", b"Infinity", b"-Infinity", b'"\\ud800"', b'{"a": "\xff"}', b"1" * 5000,
                b"{'single': 'quotes'}", b'{"a" 1}', *_junk(9)]
WRONG_SHAPE = [b"null", b"true", b"123", b'"text"', b"[]", b"[{}]", b"{}", b'{"": null}',
               b"[1e999]", str(2**64).encode()]


def test_every_json_route_is_covered_by_the_corpus(server: RunningServer) -> None:
    spec = server.client().get("/openapi.json").json()
    documented = {(method.upper(), path) for path, ops in spec["paths"].items()
                  for method, op in ops.items()
                  if "application/json" in op.get("requestBody", {}).get("content", {})}
    assert documented == {(m, p.replace("nobody", "{name}").replace("999999", "{media_id}"))
                          for m, p, _ in JSON_ROUTES}


@pytest.mark.parametrize(("method", "path", "template"), JSON_ROUTES)
def test_hostile_json_bodies_get_a_4xx_in_the_error_shape(
    server: RunningServer, method: str, path: str, template: dict[str, Any]
) -> None:
    client = server.client(server.admin_key)
    truncated = json.dumps(template).encode()
    for body in INVALID_JSON + [truncated[: len(truncated) // 2]]:
        for sent in (body, iter([body[:7], body[7:]])):  # with Content-Length, and chunked
            response = client.request(method, path, content=sent, headers=JSON)
            assert_refused(response, 400, "invalid_json")
    for body in WRONG_SHAPE:
        assert_refused(client.request(method, path, content=body, headers=JSON))
    alive(server)


# Raw JSON tokens put in place of each field of a valid body: none is a valid value
# of any field (but a batch query's id takes any integer or string, a flag true,
# and an optional field null).
TOKENS = ["1e999", "-1e999", "NaN", '"\\ud800"', '"a\\u0000b"', str(2**64), str(-(2**63) - 1),
          "-1", "1.5", "true", "null", "[[[[[[[[]]]]]]]]", '{"$ref": "#/x"}', "[" * 300 + "]" * 300,
          '"' + "x" * 50_000 + '"']


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    else:
        yield path


def _replaced(template: Any, leaf: tuple[Any, ...], token: str) -> bytes:
    body = json.loads(json.dumps(template))
    target = body
    for step in leaf[:-1]:
        target = target[step]
    target[leaf[-1]] = "@@TOKEN@@"
    return json.dumps(body).replace('"@@TOKEN@@"', token).encode()


@pytest.mark.parametrize(("method", "path", "template"), JSON_ROUTES)
def test_wrong_values_in_every_field_get_a_4xx(
    server: RunningServer, method: str, path: str, template: dict[str, Any]
) -> None:
    client = server.client(server.admin_key)
    for leaf in _leaves(template):
        for token in TOKENS:
            response = client.request(method, path, content=_replaced(template, leaf, token),
                                      headers=JSON)
            optional = (leaf[-1] in ("reason", "note", "trusted_flagger") and token == "null"
                        or leaf[-1] == "trusted_flagger" and token == "true")
            if leaf[-1] == "id" and (token.lstrip("-").isdigit() or token.startswith('"x')):
                assert response.status_code == 200, response.text[:300]
                assert response.json()["results"][0]["id"] == json.loads(token)
            elif optional:
                assert response.status_code < 500
            else:
                assert_refused(response)
    alive(server)
