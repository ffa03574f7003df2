"""Typed dependencies: the service, the calling member, match options.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in the
thread pool, and these are cheap enough that the hop would cost more than they do
(the key check is an in-memory cache hit on the hot path).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from api.abuse import admitted_caller
from hashdb.matching import MatchOptions
from hashdb.models import Caller
from hashdb.service import Service
from hashdb.signals import WIDEST_QUERY_DISTANCE


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


async def current_caller(request: Request, service: ServiceDep) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    return admitted_caller(request, service, key.strip() if scheme.lower() == "bearer" else None)


CallerDep = Annotated[Caller, Depends(current_caller)]


async def match_options(
    max_distance: Annotated[int | None, Query(
        ge=0, le=WIDEST_QUERY_DISTANCE,
        description="a Hamming budget for binary types: at most 64 for pdq (see README)"
    )] = None,
    include_disputed: bool = False,
    labels: Annotated[str | None, Query(description="comma-separated; any of them")] = None,
    min_quality: Annotated[int | None, Query(ge=0, le=100)] = None,
    include_candidates: Annotated[bool, Query(
        description="also return `candidates`: the review band, not safe to act on unseen"
    )] = False,
) -> MatchOptions:
    wanted = frozenset(p.strip().lower() for p in (labels or "").split(",") if p.strip())
    return MatchOptions(max_distance, include_disputed, wanted, min_quality, include_candidates)


MatchOptionsDep = Annotated[MatchOptions, Depends(match_options)]
