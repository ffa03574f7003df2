"""The one registry of signal types, and the hash value type.

A signal type knows its name, width, distance, default threshold, how to parse
and format a value, and how to compute itself from media. Nothing outside this
module branches on a type's name: callers ask the registry.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np

from hashdb.errors import InvalidSignal, UnknownSignalType

if TYPE_CHECKING:
    from ingest.media import MediaFile
    from ingest.pdq import PdqResult
    from ingest.trim import Box

_HEX = re.compile(r"[0-9a-fA-F]*")
# popcount of every byte value, for distances on raw bytes
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass(frozen=True, slots=True)
class HashValue:
    """One hash of one signal type: raw bytes, shown as lowercase hex."""

    type: str
    raw: bytes

    @classmethod
    def from_hex(cls, type_name: str, text: str) -> HashValue:
        return signal_type(type_name).parse(text)

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def signal_type(self) -> SignalType:
        return signal_type(self.type)

    def distance(self, other: HashValue) -> float:
        """Hamming distance (an int) for binary types, 1 - cosine for vectors."""
        if other.type != self.type:
            raise InvalidSignal(
                f"cannot compare a {self.type} hash with a {other.type} hash",
                types=[self.type, other.type],
            )
        return self.signal_type.distance(self.raw, other.raw)

    def __sub__(self, other: HashValue) -> float:
        return self.distance(other)

    def __str__(self) -> str:
        return self.hex


@dataclass(frozen=True, slots=True)
class Signal:
    """A hash of some media, with what the hasher knows about it."""

    value: HashValue
    quality: int | None = None
    timestamp: float | None = None
    # How it was made from the media when not plainly: "trimmed" (inside uniform
    # borders); for queries also a rotation or flip ("rotate90", "trimmed/flipy").
    variant: str | None = None

    @property
    def type(self) -> str:
        return self.value.type

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"type": self.value.type, "value": self.value.hex}
        if self.quality is not None:
            out["quality"] = self.quality
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp
        if self.variant is not None:
            out["variant"] = self.variant
        return out


class SignalType:
    """What every signal type says about itself. Subclasses set the class attributes."""

    name: ClassVar[str]
    bits: ClassVar[int]
    metric: ClassVar[Literal["hamming", "exact", "cosine"]]
    # The match tier: what is safe to act on automatically (inclusive).
    default_max_distance: ClassVar[float]
    # The review band ends here (inclusive): hits between the two thresholds are
    # `candidates`, shown only on request. Equal to the match threshold where a
    # type has no band.
    candidate_max_distance: ClassVar[float]
    media_types: ClassVar[frozenset[str]]
    # Hashes below this quality are neither contributed nor matched by default.
    min_quality: ClassVar[int | None] = None
    # The widest `max_distance` a caller may ask for (inclusive). A binary type sets
    # it far below the distance of unrelated hashes: wider, a matcher could page
    # through the database's values, labels and contributors. Types that take no
    # caller's `max_distance` (exact, vector) leave it at 0.
    max_query_distance: ClassVar[float] = 0
    # A type whose hits are never safe to act on alone: they are candidates for
    # review (within `candidate_max_distance`), never matches.
    review_only: ClassVar[bool] = False
    # Variants a stored signal may have, and a query signal may have (see Signal).
    stored_variants: ClassVar[frozenset[str]] = frozenset()
    query_variants: ClassVar[frozenset[str]] = frozenset()

    @property
    def nbytes(self) -> int:
        return self.bits // 8

    def parse(self, text: object) -> HashValue:
        if not isinstance(text, str):
            raise InvalidSignal(f"a {self.name} value must be a hex string", type=self.name)
        text = text.strip()
        want = self.bits // 4
        if len(text) != want:
            raise InvalidSignal(
                f"a {self.name} value is {want} hex characters, got {len(text)}",
                type=self.name,
                expected_length=want,
                length=len(text),
            )
        if not _HEX.fullmatch(text):
            raise InvalidSignal(f"a {self.name} value must be hexadecimal", type=self.name)
        return HashValue(self.name, bytes.fromhex(text))

    def parse_raw(self, text: object) -> bytes:
        """`parse(text).raw`, with a fast path for well-formed values (bulk imports)."""
        if isinstance(text, str) and len(text) == self.bits // 4:
            try:
                raw = bytes.fromhex(text)
            except ValueError:
                raw = b""
            if len(raw) == self.nbytes:  # fromhex skips spaces: the length catches them
                return raw
        return self.parse(text).raw

    def from_raw(self, raw: bytes) -> HashValue:
        if len(raw) != self.nbytes:
            raise InvalidSignal(f"a {self.name} value is {self.nbytes} bytes", type=self.name)
        return HashValue(self.name, bytes(raw))

    def distance(self, a: bytes, b: bytes) -> float:
        raise NotImplementedError

    def check_max_distance(self, max_distance: float | None) -> float:
        """A search radius an index can take: 0 to the type's width."""
        if max_distance is None:
            return self.default_max_distance
        if not 0 <= max_distance <= self.bits:
            raise InvalidSignal(
                f"max_distance for {self.name} must be between 0 and {self.bits}",
                type=self.name,
                max_distance=max_distance,
            )
        return max_distance

    def check_query_distance(self, max_distance: float) -> float:
        """A caller's `max_distance`, refused past `max_query_distance`."""
        if not 0 <= max_distance <= self.max_query_distance:
            raise InvalidSignal(
                f"max_distance for {self.name} must be between 0 and "
                f"{self.max_query_distance}",
                type=self.name,
                max_distance=max_distance,
                max_query_distance=self.max_query_distance,
            )
        return self.check_max_distance(max_distance)

    def compute(self, media: MediaFile) -> list[Signal]:
        """The signals of this type to store for one media file (empty if it does not
        apply)."""
        raise NotImplementedError

    def warm_up(self) -> None:
        """Pay one-time costs of `compute` (loading a model) now, not on a request."""

    def compute_query(self, media: MediaFile) -> list[Signal]:
        """The signals to look up when matching the media: `compute`'s, plus the
        variants that undo edits (rotations, flips, borders) where a type has them."""
        return self.compute(media)

    def check_variant(self, variant: object, stored: bool) -> str | None:
        """A variant named by a caller, validated (None for a plain signal)."""
        if variant is None:
            return None
        allowed = self.stored_variants if stored else self.query_variants
        if not isinstance(variant, str) or variant not in allowed:
            raise InvalidSignal(
                f"unknown {self.name} variant {str(variant)[:40]!r}", type=self.name,
                known=sorted(allowed),
            )
        return variant


class HammingSignalType(SignalType):
    metric = "hamming"
    default_max_distance: ClassVar[int]

    def distance(self, a: bytes, b: bytes) -> int:
        x = np.bitwise_xor(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8))
        return int(_POPCOUNT[x].sum())

    def check_max_distance(self, max_distance: float | None) -> int:
        return int(super().check_max_distance(max_distance))


class ExactSignalType(SignalType):
    metric = "exact"
    default_max_distance = 0
    candidate_max_distance = 0
    media_types = frozenset({"image", "video", "file"})

    def distance(self, a: bytes, b: bytes) -> int:
        # Exact types have no notion of nearness: equal or as far as can be.
        return 0 if a == b else self.bits

    def check_max_distance(self, max_distance: float | None) -> int:
        return 0


TRIMMED = "trimmed"
DIHEDRAL = ("rotate90", "rotate180", "rotate270", "flipx", "flipy", "flipplus1", "flipminus1")
# Halves of a video frame's picture, hashed on their own: a large logo or caption
# over one half leaves the other matchable. A region only matches the same region.
REGIONS = tuple(f"region/{side}" for side in ("top", "bottom", "left", "right"))


def _region(variant: str | None) -> str | None:
    if variant and "region/" in variant:
        return variant[variant.index("region/"):]
    return None


def variants_compatible(query: str | None, stored: str | None) -> bool:
    """Whether a query signal may match a stored one: a region hash only matches
    the same region of another frame, never a whole picture."""
    return _region(query) == _region(stored)


def match_variant(type_name: str, query: str | None, stored: str | None) -> str:
    """What found a match, for the reviewer: the type, "trimmed" if either side was
    trimmed, the region if one, and the rotation or flip the query shows
    (`pdq/trimmed/rotate90`, `pdq/region/bottom`)."""
    parts = [type_name]
    query_parts = (query or "").replace("region/", "").split("/")
    if TRIMMED in query_parts or stored == TRIMMED:
        parts.append(TRIMMED)
    region = _region(stored) or _region(query)
    if region:
        parts.append(region)
    parts.extend(p for p in query_parts if p in DIHEDRAL)
    return "/".join(parts)


class Pdq(HammingSignalType):
    """Meta's PDQ. Besides the plain hash, a media with uniform borders also stores
    the hash of the picture inside them ("trimmed"), and a query looks up the eight
    rotations and flips of both (from one DCT each): see `compute_query`.

    A video is hashed like vPDQ, one PDQ per sampled frame with its timestamp:
    four frames a second when stored, one when matched (`MediaLimits`). Frames of
    quality below 50 are dropped, and so is a frame within `frame_dedup_distance`
    bits of the last one kept (a still scene is one keyframe). Each kept frame
    also gets its trimmed hash and the hashes of the halves of its picture
    (`REGIONS`); a video query looks up the plain and mirrored views of the frame
    (rotated videos are rare: players turn them by metadata, and eight views a
    frame would cost too much at ten minutes of video)."""

    name = "pdq"
    bits = 256
    default_max_distance = 31
    candidate_max_distance = 31
    # Unrelated photos' hashes are ~128 bits apart: 1e8 pairs of hashes drawn from
    # the model fitted to real ones (benchmarks/realistic.py) averaged 127.5 with a
    # standard deviation of 8.2, none closer than 82. 64 leaves twice the default
    # for edited copies while staying ~8 deviations clear of unrelated photos, so
    # a query reaches only near-copies of itself.
    max_query_distance = 64
    media_types = frozenset({"image", "video"})
    min_quality = 50
    stored_variants = frozenset({TRIMMED, *REGIONS})
    query_variants = frozenset(
        {TRIMMED, *REGIONS, *DIHEDRAL, *(f"{TRIMMED}/{d}" for d in DIHEDRAL)}
    )

    frame_dedup_distance = 4
    video_views = ("original", "flipy")

    def compute(self, media: MediaFile) -> list[Signal]:
        if media.media_type == "video":
            return self._keyframes(media, ("original",), stored=True)
        return self._signals(self._views(media.pixels, media.content_box, ("original",),
                                         drop_unchanged=True))

    def compute_query(self, media: MediaFile) -> list[Signal]:
        if media.media_type == "video":
            return self._keyframes(media, self.video_views)
        return self._signals(self._views(media.pixels, media.content_box,
                                         ("original", *DIHEDRAL)))

    def _views(
        self, pixels: np.ndarray, box: Box | None, names: tuple[str, ...],
        drop_unchanged: bool = False, plain: dict[str, PdqResult] | None = None,
    ) -> list[tuple[str | None, PdqResult]]:
        """(variant, hash) of each named rotation or flip (ingest.pdq.UNDO) of the
        picture (`plain`, when already computed), and of the picture inside its
        borders when it has some; with `drop_unchanged`, a trimmed hash equal to the
        plain one is left out."""
        from ingest.pdq import pdq_dihedral

        plain = plain or pdq_dihedral(pixels, names)
        out = [(_variant(None, name), result) for name, result in plain.items()]
        if box is not None:
            for name, result in pdq_dihedral(box.crop(pixels), names).items():
                if not (drop_unchanged and name == "original"
                        and result.raw == plain["original"].raw):
                    out.append((_variant(TRIMMED, name), result))
        return out

    def _signals(
        self, views: list[tuple[str | None, PdqResult]], timestamp: float | None = None
    ) -> list[Signal]:
        return [Signal(HashValue(self.name, r.raw), r.quality, timestamp, variant)
                for variant, r in views]

    def _keyframes(
        self, media: MediaFile, names: tuple[str, ...], stored: bool = False
    ) -> list[Signal]:
        """The hashes of a video's kept frames, with their timestamps: each frame's
        views (`names`, of the whole frame and of the picture inside its borders)
        and the halves of the picture (`REGIONS`)."""
        from ingest.pdq import pdq_dihedral, pdq_from_pixels
        from ingest.trim import content_box

        out: list[Signal] = []
        last: bytes | None = None
        floor = self.min_quality or 0
        for frame in media.frames(stored):
            hashes = pdq_dihedral(frame.luma, names)
            plain = hashes["original"]
            if plain.quality < floor:
                continue
            if last is not None and self.distance(plain.raw, last) <= self.frame_dedup_distance:
                continue
            last = plain.raw
            box = content_box(frame.luma)
            views = self._views(frame.luma, box, names, drop_unchanged=True, plain=hashes)
            picture = frame.luma if box is None else box.crop(frame.luma)
            h, w = picture.shape[:2]
            halves = (picture[: h // 2], picture[h // 2 :], picture[:, : w // 2],
                      picture[:, w // 2 :])
            regions: list[tuple[str | None, PdqResult]] = [
                (region, result)
                for region, result in zip(REGIONS, map(pdq_from_pixels, halves), strict=True)
                if result.quality >= floor
            ]
            out.extend(self._signals(views + regions, frame.timestamp))
        return out


def _variant(prefix: str | None, view: str) -> str | None:
    """A view's variant name: "trimmed", "rotate90", "trimmed/rotate90"... or None."""
    return "/".join(p for p in (prefix, None if view == "original" else view) if p) or None


class PHash(HammingSignalType):
    """imagehash's 64-bit DCT hash, for lists other systems share. Review only:
    on the robustness corpus it added 0.1 point of recall to PDQ and SSCD, while
    distinct low-detail images (galaxies, star clusters) collide at distance 0:
    1,370 false pairs in 22.4M at 8 bits, the largest false-match source."""

    name = "phash"
    bits = 64
    default_max_distance = 8
    candidate_max_distance = 8
    # A quarter of the bits, as for PDQ (unrelated pairs: ~32 apart). Not reached
    # while pHash is review-only (its hits keep `candidate_max_distance` whatever a
    # caller asks); the cap stands should that change.
    max_query_distance = 16
    review_only = True
    media_types = frozenset({"image"})

    def compute(self, media: MediaFile) -> list[Signal]:
        import imagehash

        # Same hex as str(imagehash.phash(img)) for the image Pillow decodes.
        value = imagehash.phash(media.pil_image)
        return [Signal(HashValue(self.name, bytes.fromhex(str(value))))]


class Md5(ExactSignalType):
    name = "md5"
    bits = 128

    def compute(self, media: MediaFile) -> list[Signal]:
        return [Signal(HashValue(self.name, hashlib.md5(media.data).digest()))]


class Sha256(ExactSignalType):
    name = "sha256"
    bits = 256

    def compute(self, media: MediaFile) -> list[Signal]:
        return [Signal(HashValue(self.name, hashlib.sha256(media.data).digest()))]


class VectorSignalType(SignalType):
    """A float descriptor compared by cosine similarity. Values are int8 vectors
    (`round(x * scale)`, clipped to +-127), shown as the hex of their bytes; the
    distance is `1 - cosine` of the int8 vectors, a float in [0, 2]."""

    metric = "cosine"
    dims: ClassVar[int]
    scale: ClassVar[float]

    def distance(self, a: bytes, b: bytes) -> float:
        return cosine_distance(np.frombuffer(a, np.int8), np.frombuffer(b, np.int8))

    def check_max_distance(self, max_distance: float | None) -> float:
        # A caller's max_distance is a Hamming budget; vector types keep their tiers.
        return self.default_max_distance

    def quantize(self, vector: np.ndarray) -> bytes:
        """A float vector (any norm) as this type's int8 value."""
        v = np.asarray(vector, np.float32).reshape(self.dims)
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm == 0.0:
            raise InvalidSignal(f"a {self.name} vector must be finite and non-zero")
        q = np.clip(np.rint(v / norm * self.scale), -127, 127).astype(np.int8)
        return q.tobytes()

    def parse(self, text: object) -> HashValue:
        value = super().parse(text)
        if not np.frombuffer(value.raw, np.int8).any():
            raise InvalidSignal(f"a {self.name} vector must not be all zeros", type=self.name)
        return value


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cosine similarity of two int8 vectors, computed exactly in integers."""
    a64, b64 = a.astype(np.int64), b.astype(np.int64)
    denom = float(np.sqrt(float(a64 @ a64) * float(b64 @ b64)))
    return 1.0 - (float(a64 @ b64) / denom if denom else 0.0)


class Sscd(VectorSignalType):
    """Meta's SSCD copy-detection descriptor (`sscd_disc_mixup`, int8 ONNX), 512-d.

    Unit vectors have components within +-0.2 in practice, so `scale` 508 maps
    +-0.25 to +-127: no clipping seen, and cosines within 0.004 of the float model's.
    """

    name = "sscd"
    dims = 512
    bits = dims * 8
    scale = 508.0
    # Tiers on the background-corrected score (hashdb/background.py): a match at
    # >= 0.60, a candidate at >= 0.40, calibrated by benchmarks/robustness.py (at
    # 0.60: 124 false pairs in 22.4M, all clipart or star fields, none among 2.9M
    # photo pairs; with PDQ, 95.9% of edited copies found).
    default_max_distance = 0.40
    candidate_max_distance = 0.60
    media_types = frozenset({"image"})

    def compute(self, media: MediaFile) -> list[Signal]:
        from ingest.sscd import embedding

        return [Signal(HashValue(self.name, self.quantize(embedding(media.pil_image))))]

    def warm_up(self) -> None:
        from ingest.sscd import session

        session()


class Registry(Mapping[str, SignalType]):
    def __init__(self, types: Iterable[SignalType]) -> None:
        self._types = {t.name: t for t in types}

    def __getitem__(self, name: str) -> SignalType:
        try:
            return self._types[name]
        except KeyError:
            raise UnknownSignalType(
                f"unknown signal type {name[:64]!r}", type=name[:64], known=sorted(self._types)
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)

    def parse_names(self, names: str | Iterable[str] | None) -> list[SignalType]:
        """`"pdq,md5"` or a list of names to signal types; None means all of them."""
        if names is None:
            return list(self._types.values())
        if isinstance(names, str):
            names = [n for n in (p.strip().lower() for p in names.split(",")) if n]
        return [self[n] for n in names]


SIGNAL_TYPES = Registry([Pdq(), PHash(), Md5(), Sha256(), Sscd()])
# The widest `max_distance` of any type: what the API documents and checks first.
WIDEST_QUERY_DISTANCE = int(max(t.max_query_distance for t in SIGNAL_TYPES.values()))


def signal_type(name: str) -> SignalType:
    if not isinstance(name, str):
        raise UnknownSignalType("signal type must be a string", type=repr(name))
    return SIGNAL_TYPES[name.strip().lower()]
