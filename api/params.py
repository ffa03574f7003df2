"""Path and query parameters that name rows or positions in a log, bounded to
what the store's 64-bit integers hold: an id past 2^63 is a 400 at the door, not
an overflow inside SQLite or psycopg."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

INT64_MAX = 2**63 - 1

MediaId = Annotated[int, Path(ge=1, le=INT64_MAX, description="a media id")]
MediaIdFilter = Annotated[int | None, Query(ge=1, le=INT64_MAX,
                                            description="only events about this media")]
# Paging: the `next` of the previous page (0: from the start).
Cursor = Annotated[int, Query(ge=0, le=INT64_MAX, description="the previous page's `next`")]
