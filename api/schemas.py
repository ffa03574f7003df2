"""Request bodies, and the one error shape (the answers are api/answers.py).

Values stay strings here: the domain parses and validates them, so that a bad hash
gets the domain's own error code.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hashdb.signals import WIDEST_QUERY_DISTANCE

# A well-formed hash of each kind, for the examples: the PDQ of Meta's bridge photo.
PDQ_EXAMPLE = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
PDQ_NEAR = "f8f8f0cee0f4a84f06370a2a038f63f0b36e26d596621e1d33e6b39c4e9c9b22"
MD5_EXAMPLE = "d41d8cd98f00b204e9800998ecf8427e"


class _Body(BaseModel):
    # Strict: a body is JSON, and 0 is not false nor "5" a number; what the OpenAPI
    # document declares is what is accepted (tests/test_schemathesis.py holds us to it).
    # NaN and Infinity are not JSON, but 1e999 overflows to infinity: refused.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# Examples in the OpenAPI document: a signal type and a well-formed hash, so that a
# reader, or a schema-driven client, has a request that succeeds to start from.
SignalTypeName = Annotated[str, Field(examples=["pdq"])]
HashText = Annotated[str, Field(examples=[PDQ_EXAMPLE])]


class SignalIn(_Body):
    type: SignalTypeName
    value: HashText
    quality: int | None = Field(None, ge=0, le=100)
    timestamp: float | None = Field(None, ge=0)
    # A query made by undoing an edit locally (e.g. "rotate90"): reported on matches.
    variant: str | None = None


class MatchRequest(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"signals": [{"type": "pdq", "value": PDQ_EXAMPLE, "quality": 100}]},
        {"signals": [{"type": "pdq", "value": PDQ_EXAMPLE}, {"type": "md5", "value": MD5_EXAMPLE}],
         "max_distance": 40}]})
    signals: list[SignalIn]
    max_distance: int | None = Field(None, ge=0, le=WIDEST_QUERY_DISTANCE)
    # Set by a client that hashed a media itself (hashdb.client): the signals are
    # that media's query signals, matched as its upload would be.
    media_type: Literal["image", "video"] | None = Field(None, description=(
        "the signals are those of one media, hashed by hashdb's code (hashdb.client, "
        "`hashdb match`): matched as an upload of it is (closest match per media; for "
        "a video, `media_matches`)"))


class BatchQuery(_Body):
    id: str | int = Field(examples=[1])
    type: SignalTypeName
    value: HashText


class BatchRequest(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"queries": [
        {"id": "upload-1", "type": "pdq", "value": PDQ_EXAMPLE},
        {"id": 2, "type": "md5", "value": MD5_EXAMPLE}]}]})
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
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [
        {"type": "pdq", "value": PDQ_EXAMPLE, "labels": ["terrorism"], "quality": 100,
         "source": "case-2291"},
        # Two frames of one video: one media, found by either frame.
        {"type": "pdq", "value": PDQ_EXAMPLE, "labels": "terrorism", "media_key": "video-7",
         "timestamp": 0.0},
        {"type": "pdq", "value": PDQ_NEAR, "labels": "terrorism", "media_key": "video-7",
         "timestamp": 1.0}]}]})
    items: list[HashItemIn]


class MemberIn(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"name": "example-platform", "trusted_flagger": False}]})
    name: str
    trusted_flagger: bool = False


class KeyIn(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"roles": ["matcher", "contributor"]}]})
    roles: list[str] = Field(examples=[["matcher"]], description="any of admin, "
                             "contributor, matcher, auditor")


class WithdrawIn(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"reason": "contributed by mistake"}]})
    reason: str | None = None


class MemberUpdate(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"trusted_flagger": True, "reason": "accredited as a trusted flagger"},
        {"active": False, "reason": "left the consortium"}]})
    trusted_flagger: bool | None = None
    active: bool | None = Field(None, description="false deactivates the member: its keys "
                                "stop at once; true reactivates it")
    reason: str | None = Field(None, max_length=2000)


class FeedbackIn(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"verdict": "agree"},
        {"verdict": "disagree", "reason": "a news report about the attack, not propaganda",
         "labels": ["other-illegal"]}]})
    verdict: Literal["agree", "disagree"]
    reason: str | None = Field(None, max_length=2000,
                               description="why (required to disagree)")
    labels: list[str] | None = Field(None, description="the labels you think are right")


class ResolutionIn(_Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"action": "disable", "reason": "the disputes are right: a news report"},
        {"action": "reinstate", "reason": "checked: propaganda", "labels": ["terrorism"]}]})
    action: Literal["reinstate", "disable"]
    reason: str = Field(..., min_length=1, max_length=2000)
    labels: list[str] | None = Field(None, description="corrected labels (reinstate)")


# errors ------------------------------------------------------------------------------
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
