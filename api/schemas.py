"""Request bodies. Values stay strings here: the domain parses and validates them,
so that a bad hash gets the domain's own error code."""

from __future__ import annotations

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
