"""Request bodies. Values stay strings here: the domain parses and validates them,
so that a bad hash gets the domain's own error code."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hashdb.signals import WIDEST_QUERY_DISTANCE


class _Body(BaseModel):
    # Strict: a body is JSON, and 0 is not false nor "5" a number; what the OpenAPI
    # document declares is what is accepted (tests/test_schemathesis.py holds us to it).
    # NaN and Infinity are not JSON, but 1e999 overflows to infinity: refused.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# Examples in the OpenAPI document: a signal type and a well-formed hash, so that a
# reader, or a schema-driven client, has a request that succeeds to start from.
SignalTypeName = Annotated[str, Field(examples=["pdq"])]
HashText = Annotated[str, Field(examples=[
    "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"])]


class SignalIn(_Body):
    type: SignalTypeName
    value: HashText
    quality: int | None = Field(None, ge=0, le=100)
    timestamp: float | None = Field(None, ge=0)
    # A query made by undoing an edit locally (e.g. "rotate90"): reported on matches.
    variant: str | None = None


class MatchRequest(_Body):
    signals: list[SignalIn]
    max_distance: int | None = Field(None, ge=0, le=WIDEST_QUERY_DISTANCE)


class BatchQuery(_Body):
    id: str | int = Field(examples=[1])
    type: SignalTypeName
    value: HashText


class BatchRequest(_Body):
    queries: list[BatchQuery]


class HashItemIn(_Body):
    type: SignalTypeName
    value: HashText
    labels: list[str] | str = Field(examples=[["terrorism"]])
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
    roles: list[str] = Field(examples=[["matcher"]])


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


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(pattern=r"^[a-z_]+$", description="stable, snake_case: what went wrong")
    message: str = Field(description="for a person: what to change")
    details: dict[str, Any] = Field(description="machine-readable specifics (e.g. "
                                    "`retry_after`, `max_bytes`, `errors`)")


class ErrorResponse(BaseModel):
    """The one error shape: every 4xx and 5xx answer of every route."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail
