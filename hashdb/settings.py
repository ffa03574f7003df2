"""One Settings object, read from HASHDB_* environment variables (and CLI flags)."""

from __future__ import annotations

import os
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from hashdb.models import Role
from hashdb.ratelimit import DEFAULT_RATE_LIMITS, RoleLimit

if TYPE_CHECKING:
    from ingest.media import MediaLimits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HASHDB_", extra="ignore")

    data_dir: Path = Path("hashdb-data")
    # postgresql://... or sqlite:///path; unset means SQLite in data_dir.
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000

    max_upload_bytes: int = Field(64 * 2**20, gt=0)
    max_image_pixels: int = Field(50_000_000, gt=0)
    # Memory that decoding uploads may hold at once, each file's share estimated from
    # its header before decoding (hashdb/budget.py): a file needing more than all of
    # it is refused (413), others wait their turn up to decode_wait_seconds, then get
    # 429 with Retry-After. The default suits a small machine: a 50-megapixel RGB PNG
    # needs ~440 MiB, a 12-megapixel JPEG ~40 MiB, 8-bit 4K video ~300 MiB.
    decode_memory_bytes: int = Field(512 * 2**20, gt=0)
    decode_wait_seconds: float = Field(10.0, ge=0)
    max_batch: int = Field(10_000, gt=0)
    # Matches returned per query signal at most (nearest first).
    max_matches_per_signal: int = Field(100, gt=0)
    # JSON bodies are refused (413) as soon as more than this arrives, before any
    # parsing. The batch routes (/v1/hashes, /v1/match/batch): 10,000 sscd items
    # (1,024 hex characters each) with labels and a short note come to ~12 MB.
    max_json_bytes: int = Field(16 * 2**20, gt=0)
    # /v1/match as JSON: the signals of one media (a video hashed by the client at
    # one frame a second for three hours is ~1.5 MB).
    max_match_json_bytes: int = Field(2 * 2**20, gt=0)
    # Concurrent CPU-heavy jobs (decode+hash, big searches); default: one per core.
    cpu_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, gt=0)
    # How often a process looks for changes made by other processes (replicas).
    index_poll_seconds: float = Field(1.0, gt=0)
    # What matching has learnt about the signals it found (media, labels, status),
    # kept in memory for this many signals (~0.4 KB each): repeat matches skip the
    # database, and keep answering while it is unreachable. 0 turns the cache off.
    hit_cache_entries: int = Field(100_000, ge=0)
    # Keep an index snapshot in data_dir for fast restarts; refresh it after this
    # many changes (and at shutdown).
    index_snapshots: bool = True
    snapshot_every_changes: int = Field(100_000, gt=0)
    # How long a process trusts a key it has checked (revocations made on another
    # replica take effect within this time; on the same process, at once).
    key_cache_seconds: float = Field(5.0, ge=0)
    # Video: a query is hashed one frame every `video_frame_seconds`; a contribution
    # more densely, so that a copy cut at another instant still finds its frames.
    video_frame_seconds: float = Field(1.0, gt=0, le=60)
    video_stored_frame_seconds: float = Field(0.25, gt=0, le=60)
    # Wall-clock budget for decoding one uploaded video, and its longest duration.
    video_decode_seconds: float = Field(300.0, gt=0)
    max_video_seconds: float = Field(3 * 3600.0, gt=0)
    # A video upload matches a stored video when at least this share (percent) of
    # its frames matched the stored video's, or of the stored video's were matched.
    video_match_percent: float = Field(30.0, gt=0, le=100)
    # Background set for SSCD score correction (hashdb/background.py): a .npz of
    # vectors; empty for the packaged default, "none" to score raw cosines.
    sscd_background: str = ""
    # The label taxonomy (JSON, the shape of hashdb/data/taxonomy.json); unset means
    # the packaged default.
    taxonomy_file: Path | None = None
    # What happens to a contribution from a member who is not a trusted flagger:
    # "review" (the safe default) stores it as pending, not matched, until a trusted
    # flagger or an admin agrees; "live" makes it matchable at once. Trusted
    # flaggers' and admins' contributions are always live at once.
    review_policy: Literal["review", "live"] = "review"
    # A media is disputed (and no longer matched by default) once this many distinct
    # members disagree with it and they outnumber those who agree.
    dispute_threshold: int = Field(2, ge=1)
    # How members see other members' contributions: by "name", or by a stable
    # "anonymous" id. Admins and auditors always see names.
    contributor_names: Literal["name", "anonymous"] = "name"
    # What a bank is on the HMA-compatible routes (/m/lookup; hashdb/hma.py): each
    # "labels" of a media, or the "members" who contributed it.
    hma_banks: Literal["labels", "members"] = "labels"

    # Abuse limits (hashdb/ratelimit.py, per process). A key's budget by its most
    # generous role, as JSON: {"matcher": {"per_second": 20000, "burst": 200000}};
    # roles not given keep their defaults; per_second 0 is unlimited.
    rate_limits: dict[Role, RoleLimit] = Field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    # A client address (IPv6: its /64) that sends this many wrong keys within
    # key_lockout_seconds is refused, right keys too, for key_lockout_seconds; 0: never.
    key_lockout_failures: int = Field(10, ge=0)
    key_lockout_seconds: float = Field(60.0, gt=0)
    # Proxies (addresses or networks, comma-separated) whose X-Forwarded-For is
    # believed; from anyone else it is ignored and the peer address is the client.
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = []
    # Slow clients: a request's headers must arrive within header_read_seconds of its
    # first byte (or of the connection), its body within body_read_seconds (408).
    header_read_seconds: float = Field(10.0, gt=0)
    body_read_seconds: float = Field(30.0, gt=0)

    # `hashdb serve`'s log on stderr: "json" (one object a line: a line per request,
    # api/observability.py) or "text"; and its level (debug, info, warning, error).
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    @field_validator("rate_limits", mode="after")
    @classmethod
    def _keep_default_limits(cls, given: dict[Role, RoleLimit]) -> dict[Role, RoleLimit]:
        return {**DEFAULT_RATE_LIMITS, **given}

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, given: object) -> object:
        return given.strip().lower() if isinstance(given, str) else given

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, given: object) -> object:
        return [p.strip() for p in given.split(",") if p.strip()] if isinstance(given, str) \
            else given

    def media_limits(self) -> MediaLimits:
        """What one upload may cost to decode."""
        from ingest.media import MediaLimits
        from ingest.video import VideoLimits

        video = VideoLimits(max_duration_seconds=self.max_video_seconds,
                            max_decode_seconds=self.video_decode_seconds)
        return MediaLimits(self.max_upload_bytes, self.max_image_pixels, video,
                           self.video_frame_seconds, self.video_stored_frame_seconds)
