from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from api.deps import CallerDep, ServiceDep
from hashdb.errors import Forbidden, NotReady
from hashdb.models import Role

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(service: ServiceDep) -> dict[str, Any]:
    if not service.ready:
        raise NotReady("the indexes are still loading")
    return {"status": "ready", "indexes": service.follower.sizes(),
            "cursor": service.follower.cursor}


@router.get("/metrics")
async def metrics(request: Request, caller: CallerDep) -> Response:
    if not caller.has(Role.ADMIN):
        raise Forbidden("metrics need a key with the 'admin' role", role="admin")
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
