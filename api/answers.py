"""The shapes of the answers, as the OpenAPI document declares them.

The routes write their answers themselves (the hot ones with the fast JSON writer,
api/responses.py, which no model checks), so each model mirrors the `as_json()` that
writes its answer: a field left out when it does not apply is optional and never
null, and the document closes every object (`additionalProperties: false`), so that
tests/test_schemathesis.py catches a field the code adds without declaring it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue, JsonValue
from pydantic_core import CoreSchema

from api.schemas import MD5_EXAMPLE, PDQ_EXAMPLE, PDQ_NEAR
from hashdb.models import MediaStatus


class _Answer(BaseModel):
    """An answer's shape. Only the document closes the object (a field the code writes
    without declaring it fails tests/test_schemathesis.py): a route returning a dict
    through its model drops an undeclared key rather than failing the request."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        schema["additionalProperties"] = False
        return schema


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _absent(description: str) -> Any:
    """A field an answer carries only when it applies: optional, and never null."""
    return Field(None, description=description, json_schema_extra=_drop_default)


class SignalOut(_Answer):
    """A hash of some media, as `as_json()` writes it."""

    type: str = Field(description="the signal type: pdq, phash, md5, sha256, sscd")
    value: str = Field(description="the hash, lowercase hex")
    quality: int = _absent("PDQ's quality, 0-100, where the hasher gives one")
    timestamp: float = _absent("seconds into a video, for a keyframe")
    variant: str = _absent("how it was made from the media when not plainly: `trimmed` "
                           "(inside uniform borders)")


_MATCH_EXAMPLE: dict[str, JsonValue] = {
    "query_index": 0, "media_id": 42, "signal_type": "pdq", "variant": "pdq", "distance": 8,
    "labels": ["terrorism"], "contributor": "example-platform", "status": "active",
    "value": PDQ_NEAR}


class MatchOut(_Answer):
    """One stored signal found for one query signal."""

    model_config = ConfigDict(json_schema_extra={"examples": [_MATCH_EXAMPLE]})

    query_index: int = Field(description="which query signal found it: its position in "
                             "the request's `signals` or `queries`, or in the answer's "
                             "`signals` for a file")
    media_id: int = Field(description="the matched media (GET /v1/media/{media_id})")
    signal_type: str = Field(description="the type of the signals compared")
    variant: str = Field(description="what found it: the type (`pdq`), a transform undone "
                         "on the query (`pdq/rotate90`), a stored variant (`pdq/trimmed`)")
    distance: float = Field(description="how far apart: differing bits for pdq and phash "
                            "(an integer), 0 for md5 and sha256, 1 - cosine for sscd")
    labels: list[str] = Field(description="the media's labels (taxonomy ids)")
    contributor: str = Field(description="who contributed it (a stable anonymous id when "
                             "the server hides names)")
    status: MediaStatus = Field(description="`active`, or `disputed` when asked for "
                                "(`include_disputed=true`)")
    value: str = Field(description="the stored hash, lowercase hex")
    score: float = _absent("sscd: the similarity the tiers apply to (cosine minus the "
                           "query's background offset)")
    cosine: float = _absent("sscd: the raw cosine similarity")
    timestamp: float = _absent("seconds into the stored video, for a keyframe")


class SkippedOut(_Answer):
    """A query signal not searched, and why (too little detail to match reliably)."""

    type: str = Field(description="its signal type")
    reason: str = Field(description="why it was skipped")
    index: int = _absent("its position in the request's or the answer's signals")


class MediaMatchOut(_Answer):
    """A video's frame matches, aggregated per stored media (as vPDQ compares videos)."""

    media_id: int
    labels: list[str]
    contributor: str
    status: MediaStatus
    query_match_percent: float = Field(description="the share of the upload's frames "
                                       "that matched this media, 0-100")
    compared_match_percent: float = Field(description="the share of the stored media's "
                                          "seconds that some upload frame matched, 0-100")
    query_ranges: list[list[float]] = Field(description="the upload's matched time ranges "
                                            "[start, end], in seconds")
    compared_ranges: list[list[float]] = Field(description="the stored media's matched "
                                               "time ranges [start, end], in seconds")
    matched_frames: int = Field(description="frame matches counted")
    variant: str = Field(description="what found the closest frame match")


class MatchResponse(_Answer):
    """The answer of POST /v1/match: for JSON signals, `matches` and `skipped`; for a
    file, also what it hashed to; for a video, the matches per stored media."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"matches": [_MATCH_EXAMPLE], "skipped": []},
        {"media_type": "image", "signals": [{"type": "pdq", "value": PDQ_EXAMPLE,
                                             "quality": 100}],
         "matches": [], "skipped": []}]})

    matches: list[MatchOut] = Field(description="what is safe to act on, closest first "
                                    "per query signal")
    skipped: list[SkippedOut] = Field(description="query signals not searched (low quality)")
    candidates: list[MatchOut] = _absent("with `include_candidates=true`: the review band, "
                                         "not safe to act on unseen")
    media_type: Literal["image", "video"] = _absent("for a file: what it was")
    signals: list[SignalOut] = _absent("for a file: its signals, as searched")
    media_matches: list[MediaMatchOut] = _absent("for a video: matches per stored media")
    media_candidates: list[MediaMatchOut] = _absent(
        "for a video with `include_candidates=true`: the review band per stored media")


class BatchResult(_Answer):
    id: str | int = Field(description="the query's `id`, as sent")
    matches: list[MatchOut]
    candidates: list[MatchOut] = _absent("with `include_candidates=true`: the review band")


class BatchResponse(_Answer):
    """The answer of POST /v1/match/batch: one result per query, in the request's order."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"results": [
        {"id": "upload-1", "matches": [_MATCH_EXAMPLE]},
        {"id": 2, "matches": []}]}]})

    results: list[BatchResult]


class HashResponse(_Answer):
    """The answer of POST /v1/hash: the signals of a file (nothing is stored)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "media_type": "image",
        "signals": [{"type": "pdq", "value": PDQ_EXAMPLE, "quality": 100},
                    {"type": "md5", "value": MD5_EXAMPLE}]}]})

    media_type: Literal["image", "video"]
    signals: list[SignalOut] = Field(description="for a video: its file hashes, then one "
                                     "pdq per keyframe (with `timestamp`)")


class MediaContributed(_Answer):
    """The answer of POST /v1/media: the media's id and the signals stored (the file
    itself is discarded)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "media_id": 42, "created": True,
        "signals": [{"type": "pdq", "value": PDQ_EXAMPLE, "quality": 100},
                    {"type": "md5", "value": MD5_EXAMPLE}],
        "skipped": []}]})

    media_id: int
    created: bool = Field(description="false when this member had contributed it already")
    signals: list[SignalOut]
    skipped: list[SkippedOut] = Field(description="signals not stored (low quality)")


class ItemError(_Answer):
    code: Literal["low_quality"]
    message: str


class ItemOutcome(_Answer):
    media_id: int | None = Field(description="the media the item belongs to; null when "
                                 "the item was refused")
    created: bool = Field(description="false when this member had contributed it already, "
                          "or when it was refused")
    error: ItemError = _absent("why this item was refused (the others stand)")


class HashesResponse(_Answer):
    """The answer of POST /v1/hashes: one outcome per item, in the request's order."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [
        {"media_id": 42, "created": True},
        {"media_id": 43, "created": True}, {"media_id": 43, "created": True},
        {"media_id": None, "created": False, "error": {
            "code": "low_quality",
            "message": "pdq quality 20 is below 50: too little detail to match reliably"}}]}]})

    items: list[ItemOutcome]


class ChangeOut(_Answer):
    seq: int = Field(description="its position in the log: the next page's `after`")
    op: Literal["add", "remove", "update"] = Field(
        description="became matchable, stopped being so, or changed status or labels")
    signal_id: int
    type: str
    value: str


class ChangePage(_Answer):
    changes: list[ChangeOut]
    next: int = Field(description="`after` for the next page")


class MemberOut(_Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "example-platform", "trusted_flagger": False, "active": True,
        "created_at": "2026-12-01T09:30:00.000Z"}]})

    name: str
    trusted_flagger: bool
    active: bool
    created_at: str


class KeyOut(_Answer):
    key_id: str
    member: str
    roles: list[str]
    created_at: str
    revoked_at: str | None


class KeyCreated(KeyOut):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "key_id": "3f9c2a7b1d04", "member": "example-platform",
        "roles": ["contributor", "matcher"], "created_at": "2026-12-01T09:31:00.000Z",
        "revoked_at": None,
        "key": "hdb_3f9c2a7b1d04_kq5yN0zW8JYtR2mU6bEoVx1cLg3sPa9dHfIuTn4rQeA"}]})

    key: str = Field(description="the key itself: shown only this once")


class MemberDetail(MemberOut):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "example-platform", "trusted_flagger": False, "active": True,
        "created_at": "2026-12-01T09:30:00.000Z",
        "keys": [{"key_id": "3f9c2a7b1d04", "member": "example-platform",
                  "roles": ["contributor", "matcher"], "created_at": "2026-12-01T09:31:00.000Z",
                  "revoked_at": None}]}]})

    keys: list[KeyOut]


class MemberList(_Answer):
    members: list[MemberOut]


class KeyList(_Answer):
    keys: list[KeyOut]


class LabelOut(_Answer):
    id: str
    title: str
    description: str
    parent: str | None
    aliases: list[str]


class LabelList(_Answer):
    labels: list[LabelOut]


_MEDIA_EXAMPLE: dict[str, JsonValue] = {
    "media_id": 42, "contributor": "example-platform", "media_type": "image",
    "labels": ["terrorism"], "status": "disputed", "created_at": "2026-12-01T09:40:00.000Z",
    "updated_at": "2026-12-03T16:05:00.000Z",
    "signals": [{"type": "pdq", "value": PDQ_EXAMPLE, "quality": 100},
                {"type": "md5", "value": MD5_EXAMPLE}],
    "feedback": {"agree": 0, "disagree": 2}}


class MediaOut(_Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [_MEDIA_EXAMPLE]})

    media_id: int
    contributor: str | None
    media_type: str = Field(description="image, video, or hashes (contributed as hashes)")
    labels: list[str]
    status: MediaStatus
    created_at: str
    updated_at: str
    signals: list[SignalOut]
    feedback: dict[str, int] = Field(description="standing agree/disagree count since the "
                                     "last resolution (one per member, contributor excluded)")
    note: str | None = Field(None, description="for its contributor and the operators only")
    source: str | None = Field(None, description="for its contributor and the operators only")
    media_key: str | None = Field(None, description="for its contributor and the operators "
                                  "only")


class ReviewQueue(_Answer):
    status: str
    total: int
    media: list[MediaOut]
    next: int


class FeedbackOut(_Answer):
    id: int
    media_id: int
    member: str | None
    verdict: str
    reason: str | None
    labels: list[str] | None
    created_at: str


class FeedbackResult(_Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "effect": "disputed", "media": _MEDIA_EXAMPLE, "tally": {"agree": 0, "disagree": 2}}]})

    effect: Literal["recorded", "approved", "rejected", "disputed"]
    media: MediaOut
    tally: dict[str, int]


class FeedbackList(_Answer):
    feedback: list[FeedbackOut]


class EventOut(_Answer):
    id: int
    at: str
    kind: str
    member: str | None = Field(description="who acted")
    owner: str | None = Field(description="whom it concerns: a media's contributor, "
                              "a member whose key changed")
    key_id: str | None
    media_id: int | None
    details: dict[str, Any]


class EventPage(_Answer):
    events: list[EventOut]
    next: int


# The transparency report (hashdb/transparency.py, `Report.as_json`) -------------------
class ReportPeriod(_Answer):
    start: str = Field(alias="from", description="ISO time, inclusive")
    end: str = Field(alias="to", description="ISO time, exclusive")
    bucket: Literal["minute", "hour", "day", "week"] = Field(
        description="the step of `series`")


class ReportContributions(_Answer):
    total: int
    by_label: dict[str, int]
    by_source: dict[str, int] = Field(description="`trusted_flagger` and `member`, always both")
    entered_review: int


class ReportReview(_Answer):
    pending_at_end: int
    approved: int
    rejected: int
    median_seconds_to_review: float | None


class ReportMatches(_Answer):
    total: int
    by_label: dict[str, int]
    by_member: dict[str, int]
    media_matched: int
    media_later_disputed_or_disabled: int
    share_later_disputed_or_disabled: float | None


class ReportCandidates(_Answer):
    total: int


class ReportDisputes(_Answer):
    opened: int
    resolved: int
    outcomes: dict[str, int] = Field(description="`reinstated` and `disabled`, always both")
    median_seconds_to_resolution: float | None
    open_at_end: int


class ReportWithdrawals(_Answer):
    total: int
    by_label: dict[str, int]


class ReportPoint(_Answer):
    start: str
    contributions: int
    matches: int
    disputes_opened: int
    withdrawals: int


class TransparencyReport(_Answer):
    """KPIs of a period from the audit trail. Label and member maps are ordered by
    count, descending; medians are in seconds, null when nothing was timed."""

    period: ReportPeriod
    scope: str = Field(description="`all`, or `member:<name>` for a member's own figures")
    contributions: ReportContributions
    review: ReportReview
    matches: ReportMatches
    candidates: ReportCandidates
    disputes: ReportDisputes
    feedback: dict[str, int] = Field(description="`agree` and `disagree`, always both")
    withdrawals: ReportWithdrawals
    series: list[ReportPoint]
