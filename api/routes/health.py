from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from api.deps import CallerDep, ServiceDep
from hashdb.errors import NotReady
from hashdb.members import require_role
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
    require_role(caller, Role.ADMIN)
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
