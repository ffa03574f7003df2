"""Reading request bodies: only once the key is checked, never past the route's
cap (api/limits.py), and parsed off the event loop when large.

FastAPI reads and parses a body declared as a parameter before it resolves any
dependency, the key check included, and parses it on the event loop. So no route
declares one: JSON comes through `json_body` (a dependency on the caller, so the
key is checked first) and media through `read_media_form`.

One JSON reader serves every route: pydantic-core's parser, which refuses what
Python's `json` lets through to fail later: lone surrogates (SQLite, psycopg and
our responses cannot encode them), NaN and Infinity, and nesting deeper than 200
(where `json.loads` overflows the recursion limit). Strings holding NUL are
refused too: PostgreSQL text cannot store them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.deps import CallerDep
from api.openapi import body_schema
from api.upload import read_upload
from hashdb.errors import InvalidJson, InvalidRequest

# Bodies up to this size are parsed on the event loop: a lookup's body is ~200
# bytes, and a hop to a thread would cost it more than parsing does (~10 us a KB).
INLINE_JSON_BYTES = 8 * 1024


def loads(raw: bytes) -> Any:
    """The JSON value of a body, or InvalidJson."""
    try:
        data = from_json(raw, allow_inf_nan=False, cache_strings="keys")
    except ValueError as exc:
        raise InvalidJson("the request body is not valid JSON", error=str(exc)) from None
    # The escape is the only way a NUL can be in JSON text: look for it only then.
    if b"\\u0000" in raw and _holds_nul(data):
        raise InvalidJson("strings in the request body must not contain NUL (\\u0000)")
    return data


def validate[M: BaseModel](model: type[M], raw: bytes) -> M:
    """`raw` parsed by `loads` and validated as `model`; errors as FastAPI's own."""
    data = loads(raw)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


async def off_loop[T](raw: bytes, parse: Callable[[bytes], T]) -> T:
    """`parse(raw)`, in a thread unless the body is small."""
    if len(raw) <= INLINE_JSON_BYTES:
        return parse(raw)
    return await run_in_threadpool(parse, raw)


async def json_bytes(request: Request) -> bytes:
    """The body of a JSON request (no Content-Type counts as JSON)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise InvalidRequest("send a JSON body (Content-Type: application/json)",
                             content_type=content_type)
    return await request.body()


def json_body(model: type[BaseModel], *, required: bool = True) -> Any:
    """A dependency: the request's JSON body as `model` (None when optional and
    empty). It depends on the caller, so a bad key is answered before a byte of
    the body is read."""

    async def read(request: Request, caller: CallerDep) -> BaseModel | None:
        del caller  # declared for its order: the key is checked first
        raw = await json_bytes(request)
        if not raw.strip():
            if required:
                raise InvalidRequest("a JSON body is required", location=["body"])
            return None
        return await off_loop(raw, lambda r: validate(model, r))

    return Depends(read)


async def read_media_form(
    request: Request, fields: tuple[str, ...] = ()
) -> tuple[bytes, dict[str, str]]:
    """The media of a multipart upload (the field `file`) and the text `fields`
    present. Routes call it after their key check; the route's cap bounds it."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise InvalidRequest("send the media as a multipart (multipart/form-data) field 'file'")
    # One file; a few text fields besides ours are let through (and ignored), not
    # Starlette's 1,000.
    async with request.form(max_files=1, max_fields=len(fields) + 8) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("send the media as a multipart field named 'file'")
        texts: dict[str, str] = {}
        for name in fields:
            value = form.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise InvalidRequest(f"'{name}' must be a text field, not a file", field=name)
            texts[name] = clean_text(value, name)
        return read_upload(upload), texts


def clean_text(value: str, name: str) -> str:
    """A text field as the store can hold it: a declared charset (`utf-7`,
    `unicode_escape`) can smuggle in lone surrogates, and PostgreSQL refuses NUL."""
    if "\x00" in value:
        raise InvalidRequest(f"'{name}' must not contain NUL characters", field=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"'{name}' must be valid Unicode text", field=name) from None
    return value


def _holds_nul(data: Any) -> bool:
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def json_request_doc(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """The `openapi_extra` of a route reading `model` through `json_body`."""
    return {"requestBody": {"required": required,
                            "content": {"application/json": {"schema": body_schema(model)}}}}
