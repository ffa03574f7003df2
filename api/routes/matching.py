"""Hashing and matching: /v1/hash, /v1/match, /v1/match/batch."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api.abuse import charge
from api.answers import BatchResponse, HashResponse, MatchResponse
from api.batch import read_batch
from api.bodies import off_loop, read_media_form, validate
from api.deps import CallerDep, MatchOptionsDep, ServiceDep
from api.lookups import match_signals
from api.openapi import JSON_BODY, MATCHING, UPLOAD, body_schema, errors
from api.responses import json_response
from api.schemas import BatchRequest, MatchRequest, SignalIn
from hashdb.errors import InvalidRequest
from hashdb.matching import MatchOptions, MatchResult
from hashdb.signals import Signal, signal_type

router = APIRouter(prefix="/v1", tags=["matching"])


_UPLOAD = {"type": "object", "required": ["file"],
           "properties": {"file": {"type": "string", "format": "binary"}}}


# The form is read by hand, after the key check (see api/bodies.py).
@router.post("/hash", response_model=HashResponse,
             responses=errors(*UPLOAD, "unknown_signal_type", role=False),
             openapi_extra={"requestBody": {
                 "required": True, "content": {"multipart/form-data": {"schema": _UPLOAD}}}})
async def hash_file(
    request: Request, caller: CallerDep, service: ServiceDep, types: str | None = None
) -> Response:
    data, _ = await read_media_form(request)
    media_type, signals = await run_in_threadpool(service.hash_media, data, types)
    return json_response({"media_type": media_type, "signals": [s.as_json() for s in signals]})


_MATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": body_schema(MatchRequest)},
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {"type": "string", "format": "binary"}}}
            },
        }
    }
}


@router.post("/match", response_model=MatchResponse, openapi_extra=_MATCH_BODY,
             responses=errors(*JSON_BODY, *UPLOAD, *MATCHING))
async def match(
    request: Request, caller: CallerDep, service: ServiceDep, options: MatchOptionsDep
) -> Response:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        data, _ = await read_media_form(request)
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
    body, signals = await off_loop(await request.body() or b"{}", _read_match)
    if body.max_distance is not None and options.max_distance is None:
        options = MatchOptions(body.max_distance, options.include_disputed, options.labels,
                               options.min_quality, options.include_candidates)
    if body.media_type is not None:
        result = await run_in_threadpool(service.matcher.match_hashed, caller,
                                         body.media_type, signals, options)
        return json_response(_result(result, options, body.media_type == "video"))
    return json_response(_result(await match_signals(service, caller, signals, options),
                                 options))


@router.post("/match/batch", response_model=BatchResponse, responses=errors(*JSON_BODY, *MATCHING),
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": body_schema(BatchRequest)}}}})
async def match_batch(
    request: Request, caller: CallerDep, service: ServiceDep, options: MatchOptionsDep
) -> Response:
    raw = await request.body()

    def run() -> Response:
        queries = read_batch(raw)
        charge(request, caller, len(queries) - 1)  # a batch costs one unit per query
        results = service.matcher.match_batch(caller, queries, options)
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


def _read_match(raw: bytes) -> tuple[MatchRequest, list[Signal]]:
    """The body and its signals, parsed (in a thread when large: 10,000 signals
    take ~70 ms)."""
    body = validate(MatchRequest, raw)
    return body, [_signal(s) for s in body.signals]


def _signal(s: SignalIn) -> Signal:
    st = signal_type(s.type)
    return Signal(st.parse(s.value), s.quality, s.timestamp, st.check_variant(s.variant, False))
