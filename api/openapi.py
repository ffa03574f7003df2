"""The OpenAPI document, made to tell the truth: a schema-driven client or fuzzer
(tests/test_schemathesis.py) must be able to trust every answer it declares, and a
copy is kept in docs/openapi.json so that every change to it is deliberate
(tests/test_openapi_snapshot.py; `make openapi` writes it anew).

FastAPI's own document gets four things wrong for this API, corrected here:
- it declares a 422 `HTTPValidationError` on every route with parameters, where
  our handler answers 400 in the one error shape (api/errors.py);
- bodies that a route reads by hand (JSON or multipart on /v1/match, the batch
  read off the event loop) are declared through `openapi_extra`, where FastAPI
  copies a model's schema as it is, `$defs` and all: `body_schema` points its
  references at components, and the document hoists the definitions there;
- it cannot see the key check (a dependency reading the header): routes that
  answer 401 get the bearer scheme;
- it knows nothing of our error codes: each route lists the codes it can answer
  with `errors(...)`, and each status says which `error.code` values it carries
  there, with an example of each.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.schemas import ErrorResponse
from hashdb.errors import HashdbError

_COMPONENTS = "#/components/schemas/"
_EXAMPLES = "#/components/examples/"

# What each status means in this API, in a few words: its codes say the rest.
_STATUS_TITLES = {
    400: "Malformed request.",
    401: "Not authenticated.",
    403: "Not allowed.",
    404: "Not found.",
    408: "The body was too slow.",
    409: "Not in the current state.",
    413: "Too large.",
    415: "Not media this route takes.",
    429: "Too many requests: `Retry-After` says when to try again.",
    503: "Unavailable for now: nothing acknowledged is lost.",
}

# What each error code means, and an answer that carries it (its message and details
# as the code writes them). A code raised outside hashdb.errors (a subclass defined
# next to its rule) is described by its class docstring.
_CODES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "invalid_request": (
        "a parameter or the body is not what this route takes (`details.errors` says "
        "where), or the URL holds a NUL character",
        "queries.0.value: field required", {"location": ["queries", 0, "value"]}),
    "invalid_json": ("the body is not valid JSON", "the request body is not valid JSON",
                     {"error": "EOF while parsing a value at line 1 column 0"}),
    "invalid_signal": (
        "a hash value is malformed for its type, or `max_distance` is over its type's cap",
        "a pdq value is 64 hex characters, got 63",
        {"type": "pdq", "expected_length": 64, "length": 63}),
    "unknown_signal_type": (
        "a signal type hashdb does not have", "unknown signal type 'pdq2'",
        {"type": "pdq2", "known": ["pdq", "phash", "md5", "sha256", "sscd"]}),
    "unknown_label": (
        "a label that is not in the taxonomy (GET /v1/labels)",
        "unknown label 'spam': use one of the taxonomy's labels (GET /v1/labels)",
        {"field": "labels", "valid": ["terrorism", "child-sexual-abuse"]}),
    "unauthorized": (
        "no key, or an unknown, revoked or deactivated one", "this API key is not valid", {}),
    "forbidden": ("the key lacks the role this needs, or the member may not act on this",
                  "this needs a key with the 'admin' role", {"role": "admin"}),
    "not_found": ("no such thing, or none this key may see", "no media 42", {"media_id": 42}),
    "conflict": ("it exists already, or its status does not allow this",
                 "media 42 is deleted: nothing to decide",
                 {"media_id": 42, "status": "deleted"}),
    "request_timeout": ("the body did not all arrive within `body_read_seconds`",
                        "the request body did not arrive within 30 s", {"seconds": 30}),
    "media_too_large": (
        "the body is over this route's cap, or the media over its size, pixel or "
        "duration limit", "the request body is larger than 65536 bytes",
        {"max_bytes": 65536}),
    "invalid_media": ("the file is not an image or video hashdb can decode",
                      "the file is empty", {}),
    "too_many_requests": (
        "over this key's rate limit, too many wrong keys from this client, or no room "
        "to decode media now",
        "this key is over its rate limit (200 a second, bursts of 2000): retry in 1 s",
        {"retry_after": 1, "reason": "rate_limit", "per_second": 200, "burst": 2000}),
    "not_ready": ("the indexes are still loading", "the indexes are still loading; "
                  "retry shortly", {}),
    "store_unavailable": ("the database cannot be reached: nothing is written until it is back",
                          "the database is unreachable; retry shortly", {"retry_after": 1.0}),
}

# Every route: a NUL in the URL and a body over the route's cap are refused before
# any route runs (api/limits.py), and bad parameters are invalid_request.
_EVERY_ROUTE = ("invalid_request", "media_too_large")
# Every route behind a key: no key or a bad one, over the limit, and the store out of
# reach (a key not checked lately is looked up in it).
_AUTHENTICATED = ("unauthorized", "too_many_requests", "store_unavailable")
# What reading a body adds: it may arrive too slowly.
BODY = ("request_timeout",)
# What a JSON body adds to that.
JSON_BODY = (*BODY, "invalid_json")
# What a multipart media upload adds: media we cannot decode.
UPLOAD = (*BODY, "invalid_media")
# What a match adds: hashes, types and label filters to check, and indexes to load.
MATCHING = ("invalid_signal", "unknown_signal_type", "unknown_label", "not_ready")


def errors(
    *answers: str | int, auth: bool = True, role: bool = True
) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: each error it can answer, in the one shape.

    `answers` are error codes (`"not_found"`), or statuses (404: every code of that
    status). `auth`: the route is behind a key; `role`: it checks the key's role or
    who the member is, so it may answer 403. Each status lists the codes it carries
    here, with an example answer of each."""
    statuses = code_statuses()
    codes: dict[int, set[str]] = {}
    chosen = [*_EVERY_ROUTE, *(_AUTHENTICATED if auth else ()),
              *(("forbidden",) if auth and role else ()), *answers]
    if 413 in answers:  # a route that reads a body may also wait too long for it
        chosen.append("request_timeout")
    for answer in chosen:
        if isinstance(answer, int):
            codes.setdefault(answer, set()).update(
                c for c, s in statuses.items() if s == answer)
        else:
            codes.setdefault(statuses[answer], set()).add(answer)
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted(codes):
        names = sorted(codes[status])
        out[status] = {
            "model": ErrorResponse,
            "description": f"{_STATUS_TITLES.get(status, '')} `error.code` is one of:\n\n"
                           + "\n".join(f"- `{name}`: {_meaning(name)}" for name in names),
            # Each code's example is written once, in components (see _corrected).
            "content": {"application/json": {"examples": {
                name: {"$ref": _EXAMPLES + name} for name in names}}},
        }
    for status in (429, 503):
        if status in out:
            out[status]["headers"] = {"Retry-After": {
                "description": "seconds to wait before trying again (when known)",
                "schema": {"type": "integer"}}}
    return out


def code_statuses() -> dict[str, int]:
    """Every error code a route may answer, and its status."""
    return {cls.code: cls.status for cls in _subclasses(HashdbError)}


def _subclasses(cls: type[HashdbError]) -> Iterator[type[HashdbError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _meaning(code: str) -> str:
    if code in _CODES:
        return _CODES[code][0]
    doc = next((c.__doc__ for c in _subclasses(HashdbError) if c.code == code and c.__doc__),
               "")
    return doc.strip().split("\n\n")[0].replace("\n", " ") or code.replace("_", " ")


def _example(code: str) -> dict[str, Any]:
    _, message, details = _CODES.get(code, ("", code.replace("_", " "), {}))
    return {"error": {"code": code, "message": message, "details": details}}


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A reference to `model` for a body declared by hand (`openapi_extra`), its
    definitions carried along for `install_openapi` to put in components."""
    _, top = models_json_schema([(model, "validation")],
                                ref_template=_COMPONENTS + "{model}")
    return {"$ref": _COMPONENTS + model.__name__, "$defs": top["$defs"]}


def install_openapi(app: FastAPI) -> None:
    """Serve the corrected document at /openapi.json (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _corrected(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _corrected(spec: dict[str, Any]) -> dict[str, Any]:
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    examples: dict[str, Any] = {}
    secured = False
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            for response in responses.values():
                for media in response.get("content", {}).values():
                    for ref in media.get("examples", {}).values():
                        if ref.get("$ref", "").startswith(_EXAMPLES):
                            code = ref["$ref"].removeprefix(_EXAMPLES)
                            examples[code] = {"summary": _meaning(code), "value": _example(code)}
            for media in operation.get("requestBody", {}).get("content", {}).values():
                _hoist(media.get("schema", {}), schemas)
            if "401" in responses:
                operation["security"] = [{"bearer": []}]
                secured = True
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    _restore_examples(schemas)
    if examples:
        components["examples"] = dict(sorted(examples.items()))
    if secured:
        components["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "an API key: `Authorization: Bearer <key>`"}}
    return spec


def _restore_examples(schemas: dict[str, Any]) -> None:
    """FastAPI drops every null from the document, those in examples too (a refused
    item's `"media_id": null`), which leaves examples its own schema refuses: put the
    models' examples back as written."""
    for model in _models(BaseModel):
        extra = model.model_config.get("json_schema_extra")
        schema = schemas.get(model.__name__)
        if isinstance(extra, dict) and "examples" in extra and schema is not None \
                and schema.get("title") == model.__name__:
            schema["examples"] = json.loads(json.dumps(extra["examples"]))


def _models(cls: type[BaseModel]) -> Iterator[type[BaseModel]]:
    for sub in cls.__subclasses__():
        if sub.__module__.startswith("api."):
            yield sub
        yield from _models(sub)


def _hoist(schema: dict[str, Any], schemas: dict[str, Any]) -> None:
    for name, definition in schema.pop("$defs", {}).items():
        # Two different models of one name would make every reference to it ambiguous.
        if schemas.setdefault(name, definition) != definition:
            raise ValueError(f"two different schemas named {name!r} in the OpenAPI document")


def document() -> dict[str, Any]:
    """The document a server serves, built without serving (`make openapi`). It
    depends on no setting: an empty SQLite folder does (never $HASHDB_DATABASE_URL)."""
    from api.app import create_app  # api.app imports this module
    from hashdb.service import Service
    from hashdb.settings import Settings

    with tempfile.TemporaryDirectory() as folder:
        service = Service(Settings(data_dir=Path(folder), database_url=None))
        try:
            return create_app(service=service).openapi()
        finally:
            service.close()


def dumps(spec: dict[str, Any]) -> str:
    """The document as committed in docs/openapi.json: keys sorted, so that a diff
    shows what changed and nothing else."""
    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
