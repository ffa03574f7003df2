"""Compatibility with Meta's Hasher-Matcher-Actioner (HMA, OpenMediaMatch): its names
for signal and content types, its banks, and its answer shapes, made from hashdb's
own matches, so that a platform integrated with HMA switches by base URL.

What differs from HMA, on purpose:
- hashdb never fetches a URL: HMA's `url=` forms are refused (`UrlFetchUnsupported`).
- A bank is a label or a contributing member (`BankMapping`), not a curated list.
- Matching keeps hashdb's safeguards: only active media match (HMA's raw lookup
  returns disabled content too), and every match is in the audit log.
- One entry per media, its nearest hash; content ids are hashdb media ids.

The tables below map names; which hashdb type does what stays in the registry
(`hashdb.signals`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from enum import StrEnum
from functools import cache
from typing import Any

from hashdb.errors import InvalidMedia, InvalidRequest, UnknownSignalType
from hashdb.index.follower import IndexFollower
from hashdb.matching import Match, MatchResult
from hashdb.signals import SIGNAL_TYPES, Signal, SignalType, signal_type
from hashdb.video_matching import MediaMatch
from ingest.video import is_video

# HMA's content types (the multipart field a file travels under) to hashdb's media
# types. "file" is hashdb's own field: the type is then read from the bytes.
CONTENT_TYPES = {"photo": "image", "video": "video"}
ANY_CONTENT = "file"
# HMA's signal-type names for hashdb types, per media type, where HMA has one:
# HMA's file MD5 is a video type ("video_md5"); vPDQ is a video's frame PDQs.
# hashdb's other types answer under their own names.
_HMA_NAMES = {("video", "md5"): "video_md5"}
VIDEO_FRAMES = "vpdq"
# What HMA hashes by default for each content type (/h/hash without `types=`).
DEFAULT_HASHES = {"image": ("pdq",), "video": ("md5",)}
# HMA treats an index as stale when it was last refreshed longer ago than this.
STALE_SECONDS = 65.0


class UrlFetchUnsupported(InvalidRequest):
    """one of HMA's `url=` forms, which make the server download the media: hashdb
    never fetches URLs (send the file or its hash)"""

    code = "url_fetch_unsupported"


class BankMapping(StrEnum):
    """What an HMA bank is in hashdb (setting `hma_banks`): each label of a media,
    or the member who contributed it (as the caller may see its name)."""

    LABELS = "labels"
    MEMBERS = "members"

    def banks(self, labels: Sequence[str], contributor: str) -> tuple[str, ...]:
        return (contributor,) if self is BankMapping.MEMBERS else tuple(labels)


def url_refusal() -> UrlFetchUnsupported:
    """The answer to HMA's `url=` forms, which make the server download media:
    hashdb never does."""
    return UrlFetchUnsupported(
        "hashdb never fetches URLs: send the file (POST, as a multipart field 'photo' "
        "or 'video') or its hash (signal_type and signal)")


def refuse_url(url: str | None) -> None:
    if url is not None:
        raise url_refusal()


def hma_name(type_name: str, media_type: str = "image") -> str:
    """The name HMA gives a hashdb signal type for this media type."""
    return _HMA_NAMES.get((media_type, type_name), type_name)


@cache
def _names() -> dict[str, str]:
    """Every signal-type name a query may use (HMA's and hashdb's) to hashdb's (the
    registry is fixed at import: made once, not on every lookup)."""
    names = {name: name for name in SIGNAL_TYPES}
    names.update({hma: ours for (_, ours), hma in _HMA_NAMES.items()})
    return names


def query_type(name: str) -> SignalType:
    """The hashdb signal type an HMA signal-type name stands for."""
    ours = _names().get(name.strip().lower())
    if ours is None:
        raise UnknownSignalType(
            f"no such signal type {name[:64]!r}", type=name[:64], known=sorted(_names()))
    return signal_type(ours)


def query_signal(type_name: str | None, value: str | None) -> Signal:
    """The signal of an HMA hash lookup (`signal_type`, `signal`)."""
    if not type_name or value is None:
        raise InvalidRequest("signal_type and signal are required (or POST the file)",
                             missing=[n for n, v in (("signal_type", type_name),
                                                     ("signal", value)) if not v])
    return Signal(query_type(type_name).parse(value))


def wanted_banks(banks: str | None) -> frozenset[str] | None:
    """HMA's `banks=` filter (comma-separated); None: every bank."""
    if banks is None:
        return None
    return frozenset(b.strip() for b in banks.split(",") if b.strip())


def upload_media_type(field: str, data: bytes) -> str:
    """The media type ("image", "video") of an HMA upload, from the field it came
    under ("photo", "video"), checked against the bytes before anything is decoded
    (HMA would hash a video as a photo); read from the bytes for hashdb's own `file`."""
    video = is_video(data)
    if field == ANY_CONTENT:
        return "video" if video else "image"
    wanted = CONTENT_TYPES.get(field)
    if wanted is None:
        raise InvalidRequest(
            f"no such content_type {field[:64]!r}: send the file as a multipart field "
            f"named 'photo' or 'video'", field=field[:64], known=sorted(CONTENT_TYPES))
    if (wanted == "video") != video:
        found = "a video" if video else "no video (in a container we decode)"
        raise InvalidMedia(f"the field {field!r} holds {found}", field=field)
    return wanted


def hash_types(media_type: str, types: str | None) -> list[SignalType]:
    """The hashdb types /h/hash computes: HMA's defaults for the media type, or those
    named in `types=` (HMA's names or hashdb's) that apply to it as one hash."""
    if types is None:
        return [signal_type(n) for n in DEFAULT_HASHES[media_type]]
    out: list[SignalType] = []
    for name in (n.strip() for n in types.split(",")):
        if not name:
            continue
        st = query_type(name)
        # A video's PDQs are one per frame, not one hash (HMA's vpdq, not pdq).
        if media_type not in st.media_types or (media_type == "video"
                                                and st.metric == "hamming"):
            raise InvalidRequest(f"signal type {name[:64]!r} does not apply to a "
                                 f"{media_type}", type=name[:64])
        if st not in out:
            out.append(st)
    if not out:
        raise InvalidRequest("empty signal type selection (types=)")
    return out


def hashes(media_type: str, signals: Iterable[Signal]) -> dict[str, str]:
    """/h/hash's answer: HMA's name of each type to its hex (the plain hash: no
    variant, no frame)."""
    out: dict[str, str] = {}
    for s in signals:
        if s.variant is None and s.timestamp is None:
            out.setdefault(hma_name(s.type, media_type), s.value.hex)
    return out


# answers --------------------------------------------------------------------------------
def _nearest_per_media(matches: Iterable[Match]) -> list[Match]:
    best: dict[int, Match] = {}
    for m in matches:
        old = best.get(m.media_id)
        if old is None or m.rank < old.rank:
            best[m.media_id] = m
    return sorted(best.values(), key=lambda m: (m.distance, m.media_id))


def _distance(distance: float) -> str:
    """As HMA writes a distance: a string ("7" for a Hamming distance)."""
    return str(distance)


def raw_matches(
    result: MatchResult, include_distance: bool, mapping: BankMapping,
    banks: frozenset[str] | None,
) -> dict[str, Any]:
    """/m/raw_lookup's answer: the content ids (media ids), nearest first, or with
    their distances. The distance form carries each id under both names HMA has
    used (`bank_content_id`, and `content_id` of its first releases)."""
    found = [m for m in _nearest_per_media(result.matches)
             if banks is None or banks.intersection(mapping.banks(m.labels, m.contributor))]
    if not include_distance:
        return {"matches": [m.media_id for m in found]}
    return {"matches": [{"bank_content_id": m.media_id, "content_id": m.media_id,
                         "distance": _distance(m.distance)} for m in found]}


def _by_bank(
    found: Iterable[tuple[int, Sequence[str], str, str]], mapping: BankMapping,
    banks: frozenset[str] | None,
) -> dict[str, list[dict[str, Any]]]:
    """(media id, labels, contributor, distance) in order -> bank: its matches."""
    out: dict[str, list[dict[str, Any]]] = {}
    for media_id, labels, contributor, distance in found:
        for bank in mapping.banks(labels, contributor):
            if banks is None or bank in banks:
                out.setdefault(bank, []).append(
                    {"bank_content_id": media_id, "distance": distance})
    return out


def bank_matches(
    matches: Iterable[Match], mapping: BankMapping, banks: frozenset[str] | None
) -> dict[str, list[dict[str, Any]]]:
    """/m/lookup's answer for one signal type: bank name to its matched content."""
    return _by_bank(((m.media_id, m.labels, m.contributor, _distance(m.distance))
                     for m in _nearest_per_media(matches)), mapping, banks)


def _video_matches(
    media: Iterable[MediaMatch], mapping: BankMapping, banks: frozenset[str] | None
) -> dict[str, list[dict[str, Any]]]:
    """Videos matched by their frames, with vPDQ's distance: the share of the
    upload's frames matched, and [of the stored video's]."""
    ordered = sorted(media, key=lambda m: (-max(m.query_match_percent,
                                                m.compared_match_percent), m.media_id))
    return _by_bank(((m.media_id, m.labels, m.contributor,
                      f"{m.query_match_percent:.0f}%[{m.compared_match_percent:.0f}%]")
                     for m in ordered), mapping, banks)


def media_lookup(
    media_type: str, signals: Sequence[Signal], result: MatchResult, mapping: BankMapping,
    banks: frozenset[str] | None,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """POST /m/lookup's answer: per signal type hashed (HMA's names; a video's frames
    as vpdq), bank name to its matched content. Types that never match alone
    (review-only) are left out."""
    frames = media_type == "video"
    per_type: dict[str, list[Match]] = {}
    for s in signals:
        if signal_type(s.type).review_only or (frames and s.timestamp is not None):
            continue
        per_type.setdefault(s.type, [])
    for m in result.matches:
        if m.signal_type in per_type:  # a video's frame matches are in media_matches
            per_type[m.signal_type].append(m)
    out = {hma_name(name, media_type): bank_matches(found, mapping, banks)
           for name, found in per_type.items()}
    if frames:
        out[VIDEO_FRAMES] = _video_matches(result.media_matches, mapping, banks)
    return out


# index status ---------------------------------------------------------------------------
def index_status(follower: IndexFollower, only: str | None = None) -> dict[str, dict[str, Any]]:
    """/m/index/status: per signal-type name a query may use, HMA's `present` (the
    index is loaded), `built_to` (Unix seconds up to which it holds the store's
    changes; -1 before that is known) and `size`; and `stale`: the follower has not
    caught up for STALE_SECONDS, or cannot reach the store."""
    names = _names()
    if only is not None:
        query_type(only)  # refuses an unknown name
        names = {only.strip().lower(): names[only.strip().lower()]}
    sizes = follower.sizes() if follower.ready else {}
    at = follower.caught_up_at if follower.ready else None
    stale = (not follower.ready or follower.store_error is not None
             or at is None or time.time() - at > STALE_SECONDS)
    return {hma: {"present": follower.ready, "built_to": -1 if at is None else int(at),
                  "size": sizes.get(ours, 0), "stale": stale}
            for hma, ours in sorted(names.items())}
