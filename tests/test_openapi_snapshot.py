"""The OpenAPI document: a committed copy (docs/openapi.json) so that every change to
it is deliberate, every example in it true to its own schema, and the answers
schemathesis cannot reach (media uploads, videos, the review band, refused items)
true to it too.

When the document changes on purpose, regenerate the copy with `make openapi`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from conftest import ROOT, RunningServer

COMMITTED = ROOT / "docs" / "openapi.json"
REGENERATE = ("make openapi   (or: .venv/bin/python -m api.openapi_json docs/openapi.json), "
              "then commit docs/openapi.json with the change")
PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"


@pytest.fixture(scope="module")
def spec(server: RunningServer) -> dict[str, Any]:
    response = server.client().get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def test_the_served_document_is_the_committed_copy(spec: dict[str, Any]) -> None:
    assert COMMITTED.is_file(), f"{COMMITTED} is missing; write it with: {REGENERATE}"
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    if committed != spec:
        pytest.fail("the OpenAPI document differs from docs/openapi.json:\n  "
                    + "\n  ".join(changes(committed, spec))
                    + f"\nIf the change is deliberate, regenerate the copy:\n  {REGENERATE}",
                    pytrace=False)


def test_the_regeneration_command_writes_what_a_server_serves(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "openapi.json"
    done = subprocess.run([sys.executable, "-m", "api.openapi_json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = out.read_text(encoding="utf-8")
    assert json.loads(text) == spec
    # Deterministic bytes: keys sorted, so that a diff of the copy shows only changes.
    assert text == json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_changes_name_the_paths_operations_and_schemas_that_differ() -> None:
    old: dict[str, Any] = {
        "info": {"version": "1"},
        "paths": {"/a": {"get": {"responses": {"200": {}}}},
                  "/b": {"get": {}, "post": {"parameters": [], "responses": {
                      "200": {}, "400": {}, "404": {}}}}},
        "components": {"schemas": {"A": {"properties": {"x": {}, "y": {}}}, "B": {}}}}
    new: dict[str, Any] = {
        "info": {"version": "2"},
        "paths": {"/b": {"get": {}, "put": {}, "post": {"parameters": [{"name": "q"}],
                                                        "responses": {"200": {"x": 1},
                                                                      "400": {}, "409": {}}}},
                  "/c": {"get": {}}},
        "components": {"schemas": {"A": {"properties": {"x": {"type": "string"}, "z": {}}},
                                   "C": {}}}}
    assert changes(old, new) == [
        "removed path /a (GET)",
        "changed POST /b: parameters, responses ~200 -404 +409",
        "added PUT /b",
        "added path /c (GET)",
        "changed schema A: properties x; added properties z; removed properties y",
        "removed schema B",
        "added schema C",
        "changed info",
    ]


def test_every_example_fits_its_schema(spec: dict[str, Any]) -> None:
    checked = 0
    for where, schema, example in _examples(spec):
        errors = [f"{e.instance_path}: {e.message}" for e in _validator(spec, schema)
                  .iter_errors(example)]
        assert not errors, (where, example, errors)
        checked += 1
    # Requests and answers of the main routes, and one answer per error code and route.
    assert checked >= 100, checked


# Answers the fuzzer does not reach: real media, a video, the review band, an item refused.
def test_real_answers_fit_the_document(
    server: RunningServer, spec: dict[str, Any], shared_data: Path
) -> None:
    contributor = server.client(server.new_key("openapi-hotline", "contributor"))
    matcher = server.client(server.new_key("openapi-platform", "matcher"))
    admin = server.client(server.admin_key)
    image = (shared_data / "pdq-reference" / "bridge-mods" / "aaa-orig.jpg").read_bytes()
    edited = (shared_data / "pdq-reference" / "bridge-mods" / "blur-a-lot.jpg").read_bytes()
    video = (shared_data / "video-samples" / "chair-20-sd-bar.mp4").read_bytes()
    clip = (shared_data / "video-samples" / "chair-19-sd-bar.mp4").read_bytes()
    candidates = {"include_candidates": "true"}

    answers = [
        ("/v1/media", "post", contributor.post("/v1/media", files={"file": ("b.jpg", image)},
                                                data={"labels": "terrorism"})),
        ("/v1/media", "post", contributor.post("/v1/media", files={"file": ("v.mp4", video)},
                                                data={"labels": "terrorism"})),
        ("/v1/hashes", "post", contributor.post("/v1/hashes", json={"items": [
            {"type": "pdq", "value": PDQ, "labels": ["terrorism"], "quality": 100},
            {"type": "pdq", "value": PDQ[::-1], "labels": ["terrorism"], "quality": 10}]})),
        ("/v1/hash", "post", matcher.post("/v1/hash", files={"file": ("v.mp4", clip)})),
        ("/v1/match", "post", matcher.post("/v1/match", params=candidates,
                                           files={"file": ("e.jpg", edited)})),
        ("/v1/match", "post", matcher.post("/v1/match", params=candidates,
                                           files={"file": ("c.mp4", clip)})),
        ("/v1/match", "post", matcher.post("/v1/match", params=candidates, json={"signals": [
            {"type": "pdq", "value": PDQ}, {"type": "pdq", "value": PDQ, "quality": 5}]})),
        ("/v1/match/batch", "post", matcher.post("/v1/match/batch", params=candidates, json={
            "queries": [{"id": "a", "type": "pdq", "value": PDQ}, {"id": 7, "type": "md5",
                                                                    "value": "00" * 16}]})),
        ("/v1/changes", "get", admin.get("/v1/changes")),
        ("/v1/reports/transparency", "get", admin.get("/v1/reports/transparency")),
        ("/v1/events", "get", matcher.get("/v1/events")),
    ]
    for path, method, response in answers:
        assert response.status_code < 300, (path, response.text)
        declared = spec["paths"][path][method]["responses"][str(response.status_code)]
        schema = declared["content"]["application/json"]["schema"]
        errors = [f"{e.instance_path}: {e.message}"
                  for e in _validator(spec, schema).iter_errors(response.json())]
        assert not errors, (path, errors)
    # The branches above were all taken: a video's matches per media, the review band,
    # a refused item, a skipped query signal.
    by_path = [(p, r.json()) for p, _, r in answers]
    assert any(b.get("media_matches") for p, b in by_path if p == "/v1/match")
    assert any("candidates" in b for p, b in by_path if p == "/v1/match")
    assert any(b.get("skipped") for p, b in by_path if p == "/v1/match")
    assert any("error" in i for p, b in by_path if p == "/v1/hashes" for i in b["items"])


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two documents, by path, operation and schema."""
    out: list[str] = []
    old_paths, new_paths = old.get("paths", {}), new.get("paths", {})
    for path in sorted(set(old_paths) | set(new_paths)):
        a, b = old_paths.get(path), new_paths.get(path)
        if a is None or b is None:
            verb, ops = ("added", b) if a is None else ("removed", a)
            out.append(f"{verb} path {path} ({', '.join(m.upper() for m in sorted(ops or {}))})")
            continue
        for method in sorted(set(a) | set(b)):
            if method not in a or method not in b:
                out.append(f"{'added' if method not in a else 'removed'} {method.upper()} {path}")
            elif a[method] != b[method]:
                out.append(f"changed {method.upper()} {path}: "
                           + _operation_change(a[method], b[method]))
    old_schemas = old.get("components", {}).get("schemas", {})
    new_schemas = new.get("components", {}).get("schemas", {})
    for name in sorted(set(old_schemas) | set(new_schemas)):
        a, b = old_schemas.get(name), new_schemas.get(name)
        if a is None or b is None:
            out.append(f"{'added' if a is None else 'removed'} schema {name}")
        elif a != b:
            out.append(f"changed schema {name}: {_schema_change(a, b)}")
    for key in sorted((set(old) | set(new)) - {"paths", "components"}):
        if old.get(key) != new.get(key):
            out.append(f"changed {key}")
    rest = ({k: v for k, v in old.get("components", {}).items() if k != "schemas"},
            {k: v for k, v in new.get("components", {}).items() if k != "schemas"})
    if rest[0] != rest[1]:
        out.append("changed components: " + ", ".join(
            sorted(k for k in set(rest[0]) | set(rest[1]) if rest[0].get(k) != rest[1].get(k))))
    return out


def _operation_change(a: dict[str, Any], b: dict[str, Any]) -> str:
    parts = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key):
            continue
        if key == "responses":  # which statuses: +added, -removed, ~changed
            ra, rb = a.get(key, {}), b.get(key, {})
            marks = [("+" if s not in ra else "-" if s not in rb else "~") + s
                     for s in sorted(set(ra) | set(rb)) if ra.get(s) != rb.get(s)]
            parts.append(f"responses {' '.join(marks)}")
        else:
            parts.append(key)
    return ", ".join(parts)


def _schema_change(a: dict[str, Any], b: dict[str, Any]) -> str:
    pa, pb = a.get("properties", {}), b.get("properties", {})
    parts = []
    if changed := sorted(k for k in set(pa) & set(pb) if pa[k] != pb[k]):
        parts.append(f"properties {', '.join(changed)}")
    if added := sorted(set(pb) - set(pa)):
        parts.append(f"added properties {', '.join(added)}")
    if removed := sorted(set(pa) - set(pb)):
        parts.append(f"removed properties {', '.join(removed)}")
    if others := sorted(k for k in (set(a) | set(b)) - {"properties"}
                     if a.get(k) != b.get(k)):
        parts.append(", ".join(others))
    return "; ".join(parts)


def _examples(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(where, schema, example) for every example the document gives."""
    for name, schema in spec["components"]["schemas"].items():
        for example in schema.get("examples", []):
            yield f"schema {name}", schema, example
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                for media in response.get("content", {}).values():
                    for name, example in media.get("examples", {}).items():
                        if "$ref" in example:  # one per error code, in components
                            example = spec["components"]["examples"][
                                example["$ref"].removeprefix("#/components/examples/")]
                        yield (f"{method.upper()} {path} {status} {name}", media["schema"],
                               example["value"])


def _validator(spec: dict[str, Any], schema: dict[str, Any]) -> Any:
    # The document's components ride along, so `#/components/schemas/...` resolves.
    return jsonschema_rs.Draft202012Validator({**schema, "components": spec["components"]})
