"""Request bodies. Values stay strings here: the domain parses and validates them,
so that a bad hash gets the domain's own error code."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignalIn(_Body):
    type: str
    value: str
    quality: int | None = Field(None, ge=0, le=100)
    timestamp: float | None = Field(None, ge=0)
    # A query made by undoing an edit locally (e.g. "rotate90"): reported on matches.
    variant: str | None = None


class MatchRequest(_Body):
    signals: list[SignalIn]
    max_distance: int | None = Field(None, ge=0, le=256)


class BatchQuery(_Body):
    id: str | int
    type: str
    value: str


class BatchRequest(_Body):
    queries: list[BatchQuery]


class HashItemIn(_Body):
    type: str
    value: str
    labels: list[str] | str
    media_key: str | None = None
    timestamp: float | None = Field(None, ge=0)
    quality: int | None = Field(None, ge=0, le=100)
    note: str | None = None
    source: str | None = None
    # "trimmed" for the hash of the picture inside uniform borders.
    variant: str | None = None


class HashesRequest(_Body):
    items: list[HashItemIn]


class MemberIn(_Body):
    name: str
    trusted_flagger: bool = False


class KeyIn(_Body):
    roles: list[str]


class WithdrawIn(_Body):
    reason: str | None = None


class MemberUpdate(_Body):
    trusted_flagger: bool | None = None
    active: bool | None = Field(None, description="false deactivates the member: its keys "
                                "stop at once; true reactivates it")
    reason: str | None = Field(None, max_length=2000)


class FeedbackIn(_Body):
    verdict: Literal["agree", "disagree"]
    reason: str | None = Field(None, max_length=2000,
                               description="why (required to disagree)")
    labels: list[str] | None = Field(None, description="the labels you think are right")


class ResolutionIn(_Body):
    action: Literal["reinstate", "disable"]
    reason: str = Field(..., min_length=1, max_length=2000)
    labels: list[str] | None = Field(None, description="corrected labels (reinstate)")


# responses ---------------------------------------------------------------------------
class MemberOut(BaseModel):
    name: str
    trusted_flagger: bool
    active: bool
    created_at: str


class KeyOut(BaseModel):
    key_id: str
    member: str
    roles: list[str]
    created_at: str
    revoked_at: str | None = None


class KeyCreated(KeyOut):
    key: str = Field(description="the key itself: shown only this once")


class MemberDetail(MemberOut):
    keys: list[KeyOut]


class MemberList(BaseModel):
    members: list[MemberOut]


class KeyList(BaseModel):
    keys: list[KeyOut]


class LabelOut(BaseModel):
    id: str
    title: str
    description: str
    parent: str | None
    aliases: list[str]


class LabelList(BaseModel):
    labels: list[LabelOut]


class SignalOut(BaseModel):
    type: str
    value: str
    quality: int | None = None
    timestamp: float | None = None
    variant: str | None = None


class MediaOut(BaseModel):
    media_id: int
    contributor: str | None
    media_type: str
    labels: list[str]
    status: str
    created_at: str
    updated_at: str
    signals: list[SignalOut]
    feedback: dict[str, int] = Field(description="standing agree/disagree count since the "
                                     "last resolution (one per member, contributor excluded)")
    note: str | None = None
    source: str | None = None
    media_key: str | None = None


class ReviewQueue(BaseModel):
    status: str
    total: int
    media: list[MediaOut]
    next: int


class FeedbackOut(BaseModel):
    id: int
    media_id: int
    member: str | None
    verdict: str
    reason: str | None
    labels: list[str] | None
    created_at: str


class FeedbackResult(BaseModel):
    effect: Literal["recorded", "approved", "rejected", "disputed"]
    media: MediaOut
    tally: dict[str, int]


class FeedbackList(BaseModel):
    feedback: list[FeedbackOut]


class EventOut(BaseModel):
    id: int
    at: str
    kind: str
    member: str | None = Field(description="who acted")
    owner: str | None = Field(description="whom it concerns: a media's contributor, "
                              "a member whose key changed")
    key_id: str | None
    media_id: int | None
    details: dict[str, Any]


class EventPage(BaseModel):
    events: list[EventOut]
    next: int
