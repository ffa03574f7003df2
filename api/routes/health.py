from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.deps import CallerDep, ServiceDep
from api.openapi import errors
from hashdb.errors import NotReady
from hashdb.members import require_role
from hashdb.models import Role

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str = Field(description="`ok` while the process serves")


class Ready(BaseModel):
    # Documentation only (not a response_model): what /readyz reports about its
    # parts may grow, and must never be filtered out by a declaration.
    model_config = ConfigDict(extra="allow")
    status: Literal["ready", "degraded"] = Field(
        description="`ready` once the indexes are loaded; `degraded` while the database "
        "is unreachable (matching goes on from memory, writes answer 503)")
    store: Literal["ok", "unavailable"] = Field(description="whether the database answers")
    indexes: dict[str, int] = Field(description="hashes held per signal type")
    cursor: int = Field(description="the last change applied from the change log")
    store_error: str | None = Field(None, description="why the database is unreachable")
    store_unavailable_since: str | None = Field(None, description="since when (ISO time)")


@router.get("/healthz", response_model=Health, responses=errors(auth=False))
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None,
            responses={200: {"model": Ready}, **errors("not_ready", auth=False)})
async def readyz(service: ServiceDep) -> dict[str, Any]:
    if not service.ready:
        raise NotReady("the indexes are still loading")
    follower = service.follower
    body: dict[str, Any] = {"status": "ready", "store": "ok", "indexes": follower.sizes(),
                            "cursor": follower.cursor}
    if follower.store_error is not None:
        # The database is unreachable, yet this replica still matches from memory, so
        # it stays in rotation (200): every replica shares the one database, and a load
        # balancer taking them all out would turn a write outage into a matching one.
        # "degraded" says what is wrong (writes answer 503 store_unavailable).
        since = datetime.fromtimestamp(follower.store_error_since or 0, UTC)
        body.update(status="degraded", store="unavailable", store_error=follower.store_error,
                    store_unavailable_since=since.isoformat(timespec="seconds"))
    return body


# Prometheus' text format, not JSON (the declared type a scraper or fuzzer checks).
@router.get("/metrics", response_class=Response, responses={
    200: {"content": {"text/plain": {"schema": {"type": "string"}}},
          "description": "the metrics in the Prometheus text format"}, **errors()})
async def metrics(request: Request, caller: CallerDep) -> Response:
    require_role(caller, Role.ADMIN)
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
