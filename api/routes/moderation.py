"""Labels, review, feedback and disputes: /v1/labels, /v1/review,
/v1/media/{id}/feedback, /v1/media/{id}/resolution."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from api.answers import (
    FeedbackList,
    FeedbackResult,
    LabelList,
    MediaOut,
    ReviewQueue,
)
from api.bodies import json_body, json_request_doc
from api.deps import CallerDep, ServiceDep
from api.openapi import JSON_BODY, errors
from api.params import Cursor, MediaId
from api.schemas import FeedbackIn, ResolutionIn

router = APIRouter(prefix="/v1", tags=["moderation"])


@router.get("/labels", response_model=LabelList, responses=errors(role=False))
def labels(caller: CallerDep, service: ServiceDep) -> dict[str, Any]:
    """The taxonomy: the labels a contribution, a match filter or a correction may
    use. A filter on a label also takes its sub-labels."""
    return {"labels": [label.as_json() for label in service.taxonomy.labels]}


@router.get("/review", response_model=ReviewQueue, response_model_exclude_unset=True,
            responses=errors())
def review_queue(
    caller: CallerDep,
    service: ServiceDep,
    status: Literal["pending", "disputed"] = "pending",
    after: Cursor = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """Media waiting for a decision, oldest first (trusted flaggers and admins).
    Approve or reject a pending media with feedback (`agree` / `disagree`); admins
    settle either queue with a resolution."""
    found = service.moderation.review_queue(caller, status, after, limit)
    return {"status": status, "total": service.moderation.queue_size(caller, status),
            "media": [service.visibility.media(caller, r) for r in found],
            "next": found[-1].id if found else after}


@router.post("/media/{media_id}/feedback", response_model=FeedbackResult,
             response_model_exclude_unset=True,
             responses=errors(*JSON_BODY, "unknown_label", "not_found", "conflict"),
             openapi_extra=json_request_doc(FeedbackIn))
def give_feedback(
    media_id: MediaId, caller: CallerDep, service: ServiceDep,
    body: Annotated[FeedbackIn, json_body(FeedbackIn)],
) -> dict[str, Any]:
    """Agree or disagree with a media's labels, with a reason (the counter-notice),
    optionally proposing labels. When disagreements from `dispute_threshold`
    distinct members outnumber agreements, the media is `disputed`: not matched
    unless a caller asks (`include_disputed=true`), until an admin resolves it. On a
    pending media, a trusted flagger's or admin's feedback approves or rejects it."""
    outcome = service.moderation.give_feedback(caller, media_id, body.verdict, body.reason,
                                               body.labels)
    return {"effect": outcome.effect, "media": service.visibility.media(caller, outcome.media),
            "tally": {"agree": outcome.tally.agree, "disagree": outcome.tally.disagree}}


@router.get("/media/{media_id}/feedback", response_model=FeedbackList,
            responses=errors("not_found", role=False))
def list_feedback(media_id: MediaId, caller: CallerDep, service: ServiceDep) -> dict[str, Any]:
    """Feedback on a media: all of it for its contributor and the operators; your own
    otherwise."""
    found = service.moderation.feedback(caller, media_id)
    return {"feedback": [service.visibility.feedback(caller, f) for f in found]}


@router.post("/media/{media_id}/resolution", response_model=MediaOut,
             response_model_exclude_unset=True,
             responses=errors(*JSON_BODY, "unknown_label", "not_found", "conflict"),
             openapi_extra=json_request_doc(ResolutionIn))
def resolve(
    media_id: MediaId, caller: CallerDep, service: ServiceDep,
    body: Annotated[ResolutionIn, json_body(ResolutionIn)],
) -> dict[str, Any]:
    """An admin's decision on a disputed, pending, disabled or active media:
    `reinstate` (matched again, optionally with corrected labels) or `disable` (out
    of matching, kept for the record), with a reason. The contributor and the
    members who gave feedback see it in their events."""
    record = service.moderation.resolve(caller, media_id, body.action, body.reason,
                                        body.labels)
    return service.visibility.media(caller, record)
