from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import ServiceDep
from hashdb.errors import NotReady

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
