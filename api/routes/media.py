"""Contributing and managing media: /v1/media, /v1/hashes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, File, Form, UploadFile

from api.deps import CallerDep, ServiceDep
from api.schemas import HashesRequest, MediaOut, WithdrawIn
from api.upload import read_upload
from hashdb.importing import HashItem

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


@router.get("/media/{media_id}", response_model=MediaOut, response_model_exclude_unset=True)
def get_media(media_id: int, caller: CallerDep, service: ServiceDep) -> dict[str, Any]:
    """A media you may see: your own, one you matched or gave feedback on, and for
    reviewers one pending or disputed (admins and auditors: any). Others are 404."""
    record = service.contributions.get_media(caller, media_id)
    return service.visibility.media(caller, record)


@router.delete("/media/{media_id}", response_model=MediaOut, response_model_exclude_unset=True)
def withdraw_media(
    media_id: int, caller: CallerDep, service: ServiceDep, body: WithdrawIn | None = None
) -> dict[str, Any]:
    """Withdraw a media (its contributor or an admin): out of matching at once, kept
    in the audit trail."""
    record = service.contributions.withdraw(caller, media_id, body.reason if body else None)
    return service.visibility.media(caller, record)
