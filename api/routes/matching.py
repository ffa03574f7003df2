"""Hashing and matching: /v1/hash, /v1/match, /v1/match/batch."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, File, Request, UploadFile
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as FormFile
from starlette.responses import Response

from api.batch import read_batch
from api.deps import CallerDep, MatchOptionsDep, ServiceDep
from api.responses import json_response
from api.schemas import BatchRequest, MatchRequest, SignalIn
from api.upload import read_upload
from hashdb.errors import InvalidRequest
from hashdb.matching import MatchOptions, MatchResult
from hashdb.signals import Signal, signal_type

router = APIRouter(prefix="/v1", tags=["matching"])


@router.post("/hash")
def hash_file(
    caller: CallerDep, service: ServiceDep, file: UploadFile = File(...), types: str | None = None
) -> dict[str, Any]:
    media_type, signals = service.hash_media(read_upload(file), types)
    return {"media_type": media_type, "signals": [s.as_json() for s in signals]}


_MATCH_BODY = {
    "requestBody": {
        "content": {
            "application/json": {"schema": MatchRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string",
                                                                     "format": "binary"}}}
            },
        }
    }
}


@router.post("/match", openapi_extra=_MATCH_BODY)
async def match(
    request: Request, caller: CallerDep, service: ServiceDep, options: MatchOptionsDep
) -> Response:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        async with request.form() as form:
            upload = form.get("file")
            if not isinstance(upload, FormFile):
                raise InvalidRequest("send the media as a multipart field named 'file'")
            data = read_upload(upload)
        media_type, signals, result = await run_in_threadpool(
            service.matcher.match_media, caller, data, options
        )
        return json_response({"media_type": media_type,
                              "signals": [s.as_json() for s in signals],
                              **_result(result, options, media_type == "video")})
    if content_type and not content_type.startswith("application/json"):
        raise InvalidRequest(
            "send JSON signals (application/json) or the media as a multipart field 'file'",
            content_type=content_type,
        )
    body = _parse_match(await request.body())
    if body.max_distance is not None and options.max_distance is None:
        options = MatchOptions(body.max_distance, options.include_disputed, options.labels,
                               options.min_quality, options.include_candidates)
    signals = [_signal(s) for s in body.signals]
    if service.matcher.is_light(signals, options):
        # A lookup or two at the default threshold costs less than handing it to a
        # thread (and GIL hand-offs with dozens of threads cost tail latency): search
        # here, and go to a thread only for the database, when something matched.
        found = service.matcher.search(caller, signals, options)
        if not found.any:
            return json_response(_result(service.matcher.resolve(caller, found), options))
        result = await run_in_threadpool(service.matcher.resolve, caller, found)
    else:
        result = await run_in_threadpool(service.matcher.match, caller, signals, options)
    return json_response(_result(result, options))


@router.post("/match/batch", openapi_extra={"requestBody": {"content": {
    "application/json": {"schema": BatchRequest.model_json_schema()}}}})
async def match_batch(
    request: Request, caller: CallerDep, service: ServiceDep, options: MatchOptionsDep
) -> Response:
    raw = await request.body()

    def run() -> Response:
        results = service.matcher.match_batch(caller, read_batch(raw), options)
        out = []
        for qid, matches, candidates in results:
            item: dict[str, Any] = {"id": qid, "matches": [m.as_json() for m in matches]}
            if options.include_candidates:
                item["candidates"] = [c.as_json() for c in candidates]
            out.append(item)
        return json_response({"results": out})

    # Reading and searching 10,000 queries is CPU work: off the event loop, so
    # that single lookups keep flowing meanwhile.
    return await run_in_threadpool(run)


def _result(result: MatchResult, options: MatchOptions, video: bool = False) -> dict[str, Any]:
    out = {"matches": [m.as_json() for m in result.matches],
           "skipped": [s.as_json() for s in result.skipped]}
    if options.include_candidates:
        out["candidates"] = [c.as_json() for c in result.candidates]
    if video:
        out["media_matches"] = [m.as_json() for m in result.media_matches]
        if options.include_candidates:
            out["media_candidates"] = [m.as_json() for m in result.media_candidates]
    return out


def _signal(s: SignalIn) -> Signal:
    st = signal_type(s.type)
    return Signal(st.parse(s.value), s.quality, s.timestamp, st.check_variant(s.variant, False))


def _parse_match(raw: bytes) -> MatchRequest:
    # Parsed by hand because this route also takes multipart; errors keep the one shape.
    from fastapi.exceptions import RequestValidationError

    try:
        return MatchRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
