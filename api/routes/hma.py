"""HMA-compatible routes (Meta's Hasher-Matcher-Actioner / OpenMediaMatch): /m/raw_lookup,
/m/lookup, /h/hash, /m/index/status, in HMA's shapes, behind hashdb's keys (the
matcher role). The names, banks and shapes are `hashdb.hma`'s; matching is the
Matcher's, with its safeguards and audit log, as on /v1/match."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, RootModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import Response

from api.deps import CallerDep, ServiceDep
from api.lookups import match_signals
from api.openapi import UPLOAD, errors
from api.responses import json_response
from api.schemas import MD5_EXAMPLE, PDQ_EXAMPLE, ErrorResponse
from api.upload import read_upload
from hashdb import hma
from hashdb.errors import InvalidRequest
from hashdb.matching import MatchOptions
from hashdb.members import require_role
from hashdb.models import Caller, Role
from hashdb.service import Service

router = APIRouter(tags=["hma"])


# Answers (declared for the document; written by json_response) -----------------------
def _shape(*examples: object, closed: bool = True) -> ConfigDict:
    """Examples for the document; objects closed, as api/answers.py closes hashdb's,
    so that a field written without being declared fails tests/test_schemathesis.py."""
    extra: dict[str, Any] = {"examples": list(examples)}
    if closed:
        extra["additionalProperties"] = False
    return ConfigDict(json_schema_extra=extra)


_MATCH = {"bank_content_id": 42, "distance": "8"}


class HmaMatch(BaseModel):
    model_config = _shape(_MATCH)
    bank_content_id: int = Field(description="the matched media's hashdb `media_id`")
    distance: str = Field(description="as HMA writes it: a string (`\"8\"` for a PDQ "
                          "Hamming distance; for vpdq `\"q%[c%]\"`, the shares of the "
                          "upload's frames and of the stored video's that matched)")


class HmaRawMatch(HmaMatch):
    model_config = _shape({**_MATCH, "content_id": 42})
    content_id: int = Field(description="the same id, under the name HMA's first "
                            "releases used")


class HmaRawLookup(BaseModel):
    model_config = _shape({"matches": [42]}, {"matches": [{**_MATCH, "content_id": 42}]})
    matches: list[int] | list[HmaRawMatch] = Field(
        description="matched `media_id`s, nearest first; with `include_distance`, objects")


class HmaLookup(RootModel[dict[str, list[HmaMatch]]]):
    """Bank name (a label, or a member: setting `hma_banks`) to its matched content."""

    model_config = _shape({"terrorism": [_MATCH]}, closed=False)


class HmaMediaLookup(RootModel[dict[str, dict[str, list[HmaMatch]]]]):
    """Per signal type hashed (HMA's names: `pdq`; a video's `video_md5` and `vpdq`),
    bank name to its matched content."""

    model_config = _shape({"pdq": {"terrorism": [_MATCH]}, "md5": {}, "sha256": {},
                           "sscd": {"terrorism": [{**_MATCH, "distance": "0.1234"}]}},
                          {"video_md5": {}, "sha256": {},
                           "vpdq": {"terrorism": [{**_MATCH, "distance": "85%[40%]"}]}},
                          closed=False)


class HmaHashes(RootModel[dict[str, str]]):
    """HMA's signal-type name to the hash, hex: `{"pdq": ...}` for a photo,
    `{"video_md5": ...}` for a video."""

    model_config = _shape({"pdq": PDQ_EXAMPLE}, {"video_md5": MD5_EXAMPLE}, closed=False)


class HmaIndexState(BaseModel):
    model_config = _shape({"present": True, "built_to": 1700146048, "size": 591,
                           "stale": False})
    present: bool = Field(description="the index is loaded")
    built_to: int = Field(description="Unix seconds up to which it holds the database's "
                          "changes (-1: not known yet)")
    size: int = Field(description="hashes it holds")
    stale: bool = Field(description="hashdb's: not caught up with the database for 65 s, "
                        "or the database is unreachable")


class HmaIndexStatus(RootModel[dict[str, HmaIndexState]]):
    """Per signal-type name (HMA's and hashdb's), the state of its index."""


# Requests ------------------------------------------------------------------------------
async def matcher_caller(caller: CallerDep) -> Caller:
    """The caller, refused (403) before any body is read unless it may match."""
    require_role(caller, Role.MATCHER)
    return caller


MatcherDep = Annotated[Caller, Depends(matcher_caller)]

SignalTypeParam = Annotated[str, Query(
    description="HMA's name (`pdq`, `video_md5`) or hashdb's (`md5`, `sha256`, `sscd`...)",
    examples=["pdq"])]
SignalParam = Annotated[str, Query(
    description="the hash, hex",
    examples=[PDQ_EXAMPLE])]
BanksParam = Annotated[str | None, Query(description="comma-separated: only these banks")]
UrlParam = Annotated[str | None, Query(
    description="refused (400 url_fetch_unsupported): hashdb never fetches URLs")]
_IGNORED = "accepted for HMA's clients and ignored: hashdb has no partial bank rollout"
SeedParam = Annotated[str | None, Query(description=_IGNORED)]
CoinflipParam = Annotated[bool, Query(description=_IGNORED)]


# What a hash lookup may answer, and what HMA's `url=` forms get.
_LOOKUP = ("invalid_signal", "unknown_signal_type", "not_ready")
_URL = "url_fetch_unsupported"


_UPLOAD = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object",
    "description": "one file, under the field of its content type (HMA's way); "
                   "hashdb's own field `file` takes either",
    "properties": {name: {"type": "string", "format": "binary"}
                   for name in (*hma.CONTENT_TYPES, hma.ANY_CONTENT)}}}}}}


async def _read_upload(request: Request) -> tuple[str, bytes]:
    """The field name and bytes of HMA's one-file multipart upload, in memory only;
    the route's body cap (api/limits.py) bounds it."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise InvalidRequest("send the file as multipart/form-data, under a field named by "
                             "its content type: 'photo' or 'video'")
    async with request.form(max_files=1, max_fields=8) as form:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                return name, read_upload(value)
    raise InvalidRequest("Missing multipart/form-data file upload: send the file under a "
                         "field named by its content type, 'photo' or 'video'")


def _banks(service: Service) -> hma.BankMapping:
    return hma.BankMapping(service.settings.hma_banks)


# Routes --------------------------------------------------------------------------------
@router.get("/m/raw_lookup", response_model=HmaRawLookup, responses=errors(*_LOOKUP))
async def raw_lookup(
    caller: MatcherDep, service: ServiceDep, signal_type: SignalTypeParam,
    signal: SignalParam, include_distance: bool = False, banks: BanksParam = None,
) -> Response:
    """Look a hash up: the matched content ids (hashdb media ids). Only media safe to
    act on match (never disputed, disabled, pending or withdrawn ones)."""
    result = await match_signals(service, caller, [hma.query_signal(signal_type, signal)],
                                 MatchOptions())
    return json_response(hma.raw_matches(result, include_distance, _banks(service),
                                         hma.wanted_banks(banks)))


@router.get("/m/lookup", response_model=HmaLookup, responses=errors(*_LOOKUP, _URL))
async def lookup(
    caller: MatcherDep, service: ServiceDep, signal_type: SignalTypeParam | None = None,
    signal: SignalParam | None = None, banks: BanksParam = None, url: UrlParam = None,
    seed: SeedParam = None, bypass_coinflip: CoinflipParam = False,
) -> Response:
    """Look a hash up: the banks its matches are in."""
    hma.refuse_url(url)
    result = await match_signals(service, caller, [hma.query_signal(signal_type, signal)],
                                 MatchOptions())
    return json_response(hma.bank_matches(result.matches, _banks(service),
                                          hma.wanted_banks(banks)))


@router.post("/m/lookup", response_model=HmaMediaLookup,
             responses=errors(*UPLOAD, "not_ready", _URL),
             openapi_extra=_UPLOAD)
async def lookup_file(
    request: Request, caller: MatcherDep, service: ServiceDep, banks: BanksParam = None,
    url: UrlParam = None, seed: SeedParam = None, bypass_coinflip: CoinflipParam = False,
) -> Response:
    """Hash the file in memory (never stored) and look its hashes up, as /v1/match
    does with an upload: per signal type, the banks its matches are in."""
    hma.refuse_url(url)
    field, data = await _read_upload(request)
    hma.upload_media_type(field, data)
    media_type, signals, result = await run_in_threadpool(
        service.matcher.match_media, caller, data, MatchOptions())
    return json_response(hma.media_lookup(media_type, signals, result, _banks(service),
                                          hma.wanted_banks(banks)))


@router.post("/h/hash", response_model=HmaHashes,
             responses=errors(*UPLOAD, "unknown_signal_type", _URL),
             openapi_extra=_UPLOAD)
async def hash_file(
    request: Request, caller: MatcherDep, service: ServiceDep, url: UrlParam = None,
    types: Annotated[str | None, Query(
        description="comma-separated signal types (default: HMA's, `pdq` for a photo, "
        "`video_md5` for a video)")] = None,
) -> Response:
    """Hash the file in memory (never stored): HMA's signal-type names to hex."""
    hma.refuse_url(url)
    field, data = await _read_upload(request)
    wanted = hma.hash_types(hma.upload_media_type(field, data), types)
    media_type, signals = await run_in_threadpool(
        service.hash_media, data, ",".join(st.name for st in wanted))
    return json_response(hma.hashes(media_type, signals))


@router.get("/h/hash", status_code=400, response_model=ErrorResponse, responses=errors(_URL))
async def hash_url(caller: MatcherDep, url: UrlParam = None) -> Response:
    """HMA's URL form of /h/hash: always refused, hashdb never fetches URLs (POST the
    file instead)."""
    raise hma.url_refusal()


@router.get("/m/index/status", response_model=HmaIndexStatus,
            responses=errors("unknown_signal_type"))
async def index_status(
    caller: MatcherDep, service: ServiceDep,
    signal_type: Annotated[str | None, Query(description="only this signal type")] = None,
) -> Response:
    """The state of each signal type's index, in HMA's shape."""
    return json_response(hma.index_status(service.follower, signal_type))
