"""Contributing and managing media: /v1/media, /v1/hashes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, File, Form, UploadFile

from api.deps import CallerDep, ServiceDep
from api.schemas import HashesRequest, WithdrawIn
from api.upload import read_upload
from hashdb.importing import HashItem
from hashdb.models import Caller, MediaRecord

router = APIRouter(prefix="/v1", tags=["media"])


@router.post("/media", status_code=201)
def contribute_media(
    caller: CallerDep,
    service: ServiceDep,
    file: UploadFile = File(...),
    labels: str = Form(..., description="comma-separated"),
    note: str | None = Form(None),
    source: str | None = Form(None),
) -> dict[str, Any]:
    contributed, signals, skipped = service.contributions.contribute_media(
        caller, read_upload(file), labels.split(","), note, source
    )
    return {
        "media_id": contributed.media_id,
        "created": contributed.created,
        "signals": [s.as_json() for s in signals],
        "skipped": [s.as_json() for s in skipped],
    }


@router.post("/hashes")
def contribute_hashes(
    body: HashesRequest, caller: CallerDep, service: ServiceDep
) -> dict[str, Any]:
    items = [
        HashItem(i.type, i.value, i.labels.split(",") if isinstance(i.labels, str) else i.labels,
                 i.media_key, i.timestamp, i.quality, i.note, i.source, i.variant)
        for i in body.items
    ]
    return {"items": [o.as_json() for o in service.contributions.contribute_hashes(caller, items)]}


@router.get("/media/{media_id}")
def get_media(media_id: int, caller: CallerDep, service: ServiceDep) -> dict[str, Any]:
    return media_json(service.contributions.get_media(caller, media_id), caller)


@router.delete("/media/{media_id}")
def withdraw_media(
    media_id: int, caller: CallerDep, service: ServiceDep, body: WithdrawIn | None = None
) -> dict[str, Any]:
    record = service.contributions.withdraw(caller, media_id, body.reason if body else None)
    return media_json(record, caller)


def media_json(record: MediaRecord, caller: Caller) -> dict[str, Any]:
    out: dict[str, Any] = {
        "media_id": record.id,
        "contributor": record.owner.name,
        "media_type": record.media_type,
        "labels": list(record.labels),
        "status": record.status.value,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "signals": [s.as_json() for s in record.signals],
        "feedback": record.feedback,
    }
    # Members are isolated: private fields only for the owner and the operators.
    if record.owner.id == caller.member.id or caller.sees_everything:
        out.update(note=record.note, source=record.source, media_key=record.media_key)
    return out
