"""Members, keys, and the logs (events, the audit trail, the change log)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.answers import (
    ChangePage,
    EventPage,
    KeyCreated,
    KeyList,
    KeyOut,
    MemberDetail,
    MemberList,
    MemberOut,
)
from api.bodies import json_body, json_request_doc
from api.deps import CallerDep, ServiceDep
from api.openapi import JSON_BODY, errors
from api.params import Cursor, MediaIdFilter
from api.schemas import KeyIn, MemberIn, MemberUpdate
from hashdb.models import ApiKey, Member

router = APIRouter(prefix="/v1", tags=["members"])

_KINDS = Query(description="comma-separated event kinds, e.g. feedback,media_disputed")


@router.post("/members", status_code=201, response_model=MemberOut,
             responses=errors(*JSON_BODY, "conflict"), openapi_extra=json_request_doc(MemberIn))
def create_member(
    caller: CallerDep, service: ServiceDep, body: Annotated[MemberIn, json_body(MemberIn)]
) -> dict[str, Any]:
    return member_json(service.members.create_member(caller, body.name, body.trusted_flagger))


@router.get("/members", response_model=MemberList, responses=errors())
def list_members(caller: CallerDep, service: ServiceDep) -> dict[str, Any]:
    return {"members": [member_json(m) for m in service.members.list_members(caller)]}


@router.get("/members/{name}", response_model=MemberDetail, responses=errors("not_found"))
def get_member(name: str, caller: CallerDep, service: ServiceDep) -> dict[str, Any]:
    member, keys = service.members.get_member(caller, name)
    return {**member_json(member), "keys": [key_json(k) for k in keys]}


@router.patch("/members/{name}", response_model=MemberOut,
              responses=errors(*JSON_BODY, "not_found", "conflict"),
              openapi_extra=json_request_doc(MemberUpdate))
def update_member(
    name: str, caller: CallerDep, service: ServiceDep,
    body: Annotated[MemberUpdate, json_body(MemberUpdate)],
) -> dict[str, Any]:
    """Grant or withdraw trusted-flagger status; deactivate (`active: false`) or
    reactivate a member. A deactivated member's keys stop at once."""
    return member_json(service.members.update_member(
        caller, name, trusted_flagger=body.trusted_flagger, active=body.active,
        reason=body.reason))


@router.get("/members/{name}/keys", response_model=KeyList, responses=errors("not_found"))
def list_keys(name: str, caller: CallerDep, service: ServiceDep) -> dict[str, Any]:
    _, keys = service.members.get_member(caller, name)
    return {"keys": [key_json(k) for k in keys]}


@router.post("/members/{name}/keys", status_code=201, response_model=KeyCreated,
             responses=errors(*JSON_BODY, "not_found"), openapi_extra=json_request_doc(KeyIn))
def create_key(
    name: str, caller: CallerDep, service: ServiceDep, body: Annotated[KeyIn, json_body(KeyIn)]
) -> dict[str, Any]:
    record, key = service.members.create_key(caller, name, body.roles)
    return {**key_json(record), "key": key}


@router.delete("/keys/{key_id}", response_model=KeyOut, responses=errors("not_found"))
def revoke_key(key_id: str, caller: CallerDep, service: ServiceDep) -> dict[str, Any]:
    return key_json(service.members.revoke_key(caller, key_id))


@router.get("/events", response_model=EventPage, responses=errors(role=False))
def events(
    caller: CallerDep,
    service: ServiceDep,
    after: Cursor = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    kind: Annotated[str | None, _KINDS] = None,
    media_id: MediaIdFilter = None,
) -> dict[str, Any]:
    """Your own events: what you did (contributions, matches, feedback), what happened
    to your media and keys, and decisions on media you gave feedback on. Admins and
    auditors see every event (and have `/v1/audit` for filters)."""
    found = service.audit.events(caller, after, limit, _kinds(kind), media_id)
    return {"events": [service.visibility.event(caller, e) for e in found],
            "next": found[-1].id if found else after}


@router.get("/audit", response_model=EventPage, responses=errors())
def audit(
    caller: CallerDep,
    service: ServiceDep,
    after: Cursor = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    kind: Annotated[str | None, _KINDS] = None,
    media_id: MediaIdFilter = None,
    member: Annotated[str | None, Query(description="the acting member's name")] = None,
    start: Annotated[str | None, Query(alias="from", description="date or ISO time")] = None,
    end: Annotated[str | None, Query(alias="to", description="date or ISO time")] = None,
) -> dict[str, Any]:
    """The audit trail (admins and auditors): every contribution, withdrawal, change
    of status, feedback, resolution, key and member change, and match, with its actor
    and key. Append-only: nothing can edit or delete it. Page with `after=next`."""
    found = service.audit.audit(caller, after, limit, _kinds(kind), media_id, member,
                                start, end)
    return {"events": [e.as_json() for e in found], "next": found[-1].id if found else after}


@router.get("/changes", response_model=ChangePage, responses=errors())
def changes(
    caller: CallerDep,
    service: ServiceDep,
    after: Cursor = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """The change log after a cursor: what became matchable or stopped being so."""
    found = service.changes(caller, after, limit)
    return {"changes": [{"seq": c.seq, "op": c.op, "signal_id": c.signal_id,
                         "type": c.value.type, "value": c.value.hex} for c in found],
            "next": found[-1].seq if found else after}


def member_json(member: Member) -> dict[str, Any]:
    return {"name": member.name, "trusted_flagger": member.trusted_flagger,
            "active": member.active, "created_at": member.created_at}


def key_json(key: ApiKey) -> dict[str, Any]:
    return {"key_id": key.key_id, "member": key.member.name, "roles": sorted(key.roles),
            "created_at": key.created_at, "revoked_at": key.revoked_at}


def _kinds(kind: str | None) -> frozenset[str]:
    return frozenset(k.strip() for k in (kind or "").split(",") if k.strip())
