"""Members, keys and the event log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import CallerDep, ServiceDep
from api.schemas import KeyIn, MemberIn

router = APIRouter(prefix="/v1", tags=["members"])


@router.post("/members", status_code=201)
def create_member(body: MemberIn, caller: CallerDep, service: ServiceDep) -> dict[str, Any]:
    member = service.members.create_member(caller, body.name, body.trusted_flagger)
    return {"name": member.name, "trusted_flagger": member.trusted_flagger,
            "created_at": member.created_at}


@router.post("/members/{name}/keys", status_code=201)
def create_key(name: str, body: KeyIn, caller: CallerDep, service: ServiceDep) -> dict[str, Any]:
    record, key = service.members.create_key(caller, name, body.roles)
    return {"key_id": record.key_id, "member": name, "roles": sorted(record.roles), "key": key}


@router.delete("/keys/{key_id}")
def revoke_key(key_id: str, caller: CallerDep, service: ServiceDep) -> dict[str, Any]:
    service.members.revoke_key(caller, key_id)
    return {"key_id": key_id, "revoked": True}


@router.get("/events")
def events(
    caller: CallerDep,
    service: ServiceDep,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    found = service.events(caller, after, limit)
    return {"events": [e.as_json() for e in found],
            "next": found[-1].id if found else after}


@router.get("/changes")
def changes(
    caller: CallerDep,
    service: ServiceDep,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """The change log after a cursor: what became matchable or stopped being so."""
    found = service.changes(caller, after, limit)
    return {"changes": [{"seq": c.seq, "op": c.op, "signal_id": c.signal_id,
                         "type": c.value.type, "value": c.value.hex} for c in found],
            "next": found[-1].seq if found else after}
