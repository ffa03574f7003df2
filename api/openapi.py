"""The OpenAPI document, made to tell the truth: a schema-driven client or fuzzer
(tests/test_schemathesis.py) must be able to trust every answer it declares.

FastAPI's own document gets three things wrong for this API, corrected here:
- it declares a 422 `HTTPValidationError` on every route with parameters, where
  our handler answers 400 in the one error shape (api/errors.py);
- bodies that a route reads by hand (JSON or multipart on /v1/match, the batch
  read off the event loop) are declared through `openapi_extra`, where FastAPI
  copies a model's schema as it is, `$defs` and all: `body_schema` points its
  references at components, and the document hoists the definitions there;
- it cannot see the key check (a dependency reading the header): routes that
  answer 401 get the bearer scheme.
Each route lists the errors it can answer with `errors(...)`, all in one shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.schemas import ErrorResponse

_COMPONENTS = "#/components/schemas/"

# What each status means in this API: the codes a client may see in error.code.
_MEANINGS = {
    400: "The request is malformed (invalid_request, invalid_json, invalid_signal, "
         "unknown_signal_type, unknown_label).",
    401: "No key, or an unknown, revoked or deactivated one (unauthorized).",
    403: "The key lacks the role this needs, or the member may not act on this (forbidden).",
    404: "No such thing, or none this key may see (not_found).",
    409: "The current state forbids it: it exists already, or its status does not allow "
         "this (conflict).",
    408: "The request body did not all arrive in time (request_timeout).",
    413: "The body or the media is over its size limit (media_too_large).",
    415: "The file is not media we can decode, or of a kind this route does not take "
         "(invalid_media, unsupported_media_type).",
    429: "Over this key's rate limit, this client sent too many wrong keys, or there is "
         "no room to decode now (too_many_requests); Retry-After says when to try again.",
    503: "The indexes are still loading (not_ready), or the database cannot be reached "
         "(store_unavailable); nothing acknowledged is lost.",
}

# Every route behind a key: no key or a bad one, the wrong role, over the limit,
# and the store out of reach (the key check itself may need it).
_AUTHENTICATED = (401, 403, 429, 503)


def errors(*statuses: int, auth: bool = True) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: each error status it can answer, in the one shape.
    `auth` adds what every route behind a key may answer."""
    wanted = set(statuses) | (set(_AUTHENTICATED) if auth else set())
    if 413 in wanted:  # a route that reads a body may also wait too long for it
        wanted.add(408)
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted(wanted):
        out[status] = {"model": ErrorResponse, "description": _MEANINGS[status]}
    if 429 in out:
        out[429]["headers"] = {"Retry-After": {
            "description": "seconds to wait before trying again", "schema": {"type": "integer"}}}
    return out


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
    secured = False
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            for media in operation.get("requestBody", {}).get("content", {}).values():
                _hoist(media.get("schema", {}), schemas)
            if "401" in responses:
                operation["security"] = [{"bearer": []}]
                secured = True
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    if secured:
        components["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "an API key: `Authorization: Bearer <key>`"}}
    return spec


def _hoist(schema: dict[str, Any], schemas: dict[str, Any]) -> None:
    for name, definition in schema.pop("$defs", {}).items():
        # Two different models of one name would make every reference to it ambiguous.
        if schemas.setdefault(name, definition) != definition:
            raise ValueError(f"two different schemas named {name!r} in the OpenAPI document")
