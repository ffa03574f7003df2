"""Contributing and managing media: /v1/media, /v1/hashes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api.abuse import charge
from api.answers import HashesResponse, MediaContributed, MediaOut
from api.bodies import json_body, json_request_doc, read_media_form
from api.deps import CallerDep, ServiceDep
from api.openapi import JSON_BODY, UPLOAD, errors
from api.params import MediaId
from api.responses import json_response
from api.schemas import HashesRequest, WithdrawIn
from hashdb.errors import InvalidRequest
from hashdb.importing import HashItem

router = APIRouter(prefix="/v1", tags=["media"])


_MEDIA_FORM = {"type": "object", "required": ["file", "labels"], "properties": {
    "file": {"type": "string", "format": "binary"},
    "labels": {"type": "string", "description": "comma-separated", "examples": ["terrorism"]},
    "note": {"type": "string"},
    "source": {"type": "string"}}}


# Bodies are read by hand, after the key check (see api/bodies.py).
@router.post("/media", status_code=201, response_model=MediaContributed,
             responses=errors(*UPLOAD, "unknown_label"), openapi_extra={
    "requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": _MEDIA_FORM}}}})
async def contribute_media(request: Request, caller: CallerDep, service: ServiceDep) -> Response:
    data, fields = await read_media_form(request, ("labels", "note", "source"))
    if "labels" not in fields:
        raise InvalidRequest("labels: field required (comma-separated)",
                             location=["body", "labels"])
    contributed, signals, skipped = await run_in_threadpool(
        service.contributions.contribute_media, caller, data, fields["labels"].split(","),
        fields.get("note"), fields.get("source"))
    return json_response({
        "media_id": contributed.media_id,
        "created": contributed.created,
        "signals": [s.as_json() for s in signals],
        "skipped": [s.as_json() for s in skipped],
    }, status_code=201)


@router.post("/hashes", response_model=HashesResponse, response_model_exclude_unset=True,
             responses=errors(*JSON_BODY, "invalid_signal", "unknown_signal_type",
                              "unknown_label"),
             openapi_extra=json_request_doc(HashesRequest))
def contribute_hashes(
    request: Request, caller: CallerDep, service: ServiceDep,
    body: Annotated[HashesRequest, json_body(HashesRequest)],
) -> dict[str, Any]:
    charge(request, caller, len(body.items) - 1)  # a batch costs one unit per item
    items = [
        HashItem(i.type, i.value, i.labels.split(",") if isinstance(i.labels, str) else i.labels,
                 i.media_key, i.timestamp, i.quality, i.note, i.source, i.variant)
        for i in body.items
    ]
    return {"items": [o.as_json() for o in service.contributions.contribute_hashes(caller, items)]}


@router.get("/media/{media_id}", response_model=MediaOut, response_model_exclude_unset=True,
            responses=errors("not_found", role=False))
def get_media(media_id: MediaId, caller: CallerDep, service: ServiceDep) -> dict[str, Any]:
    """A media you may see: your own, one you matched or gave feedback on, and for
    reviewers one pending or disputed (admins and auditors: any). Others are 404."""
    record = service.contributions.get_media(caller, media_id)
    return service.visibility.media(caller, record)


@router.delete("/media/{media_id}", response_model=MediaOut, response_model_exclude_unset=True,
               responses=errors(*JSON_BODY, "not_found"),
               openapi_extra=json_request_doc(WithdrawIn, required=False))
def withdraw_media(
    media_id: MediaId, caller: CallerDep, service: ServiceDep,
    body: Annotated[WithdrawIn | None, json_body(WithdrawIn, required=False)],
) -> dict[str, Any]:
    """Withdraw a media (its contributor or an admin): out of matching at once, kept
    in the audit trail."""
    record = service.contributions.withdraw(caller, media_id, body.reason if body else None)
    return service.visibility.media(caller, record)
