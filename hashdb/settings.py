"""One Settings object, read from HASHDB_* environment variables (and CLI flags)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    max_batch: int = Field(10_000, gt=0)
    # Matches returned per query signal at most (nearest first).
    max_matches_per_signal: int = Field(100, gt=0)
    # Concurrent CPU-heavy jobs (decode+hash, big searches); default: one per core.
    cpu_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, gt=0)
    # How often a process looks for changes made by other processes (replicas).
    index_poll_seconds: float = Field(1.0, gt=0)
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

    def media_limits(self) -> MediaLimits:
        """What one upload may cost to decode."""
        from ingest.media import MediaLimits
        from ingest.video import VideoLimits

        video = VideoLimits(max_duration_seconds=self.max_video_seconds,
                            max_decode_seconds=self.video_decode_seconds)
        return MediaLimits(self.max_upload_bytes, self.max_image_pixels, video,
                           self.video_frame_seconds, self.video_stored_frame_seconds)
