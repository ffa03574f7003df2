"""The corpus of the robustness benchmark: its originals (minus the SSCD background
images), their local hashes, the near-duplicate groups dropped from it, and the plan
of queries (which originals are contributed, which edits are matched). Everything
slow is cached under the corpus' own folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from robustness_alignment import align, components, grey_for_alignment
from robustness_edits import EDITS
from robustness_stats import HashRows, Query, cosine_matrix, min_hamming, unit_vectors
from sscd_background import in_background

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
# Bump when the originals' hashes or the near-duplicate rule change.
CORPUS_VERSION = 2  # how originals are prepared (original_bytes) and which are left out
FEATURES_VERSION = 2
NEAR_DUP_VERSION = 2
PDQ_THRESHOLD = 31
PDQ_MIN_QUALITY = 50  # Meta's floor, the service's too: below it PDQ is not used
NEAR_DUP_COSINE = 0.6

# Originals larger than this (longest side) are scaled down once, as a site would
# store them; RGBA is flattened onto white. Such originals are JPEG q95.
MAX_SIDE = 1600
PHOTOS = Path.home() / ".cache" / "hashdb-photos"


@dataclass(frozen=True, slots=True)
class Original:
    """One corpus image: `key` is "pos/<file>" or "neg/<file>"."""

    key: str
    path: Path

    @property
    def negative(self) -> bool:
        return self.key.startswith("neg/")


def original_bytes(path: Path) -> bytes:
    """The file as it is if it is an RGB JPEG of at most MAX_SIDE pixels; else the
    image flattened onto white, scaled to MAX_SIDE and saved as JPEG quality 95."""
    data = path.read_bytes()
    Image.MAX_IMAGE_PIXELS = None  # our own corpus: a few clipart PNGs are huge
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG" and img.mode == "RGB" and max(img.size) <= MAX_SIDE:
            return data
        img.draft("RGB", (MAX_SIDE, MAX_SIDE))
        if img.mode in ("RGBA", "LA", "P", "PA"):
            rgba = img.convert("RGBA")
            rgb = Image.new("RGB", rgba.size, (255, 255, 255))
            rgb.paste(rgba, mask=rgba.getchannel("A"))
        else:
            rgb = img.convert("RGB")
    if max(rgb.size) > MAX_SIDE:
        rgb.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def decode_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


@dataclass(frozen=True, slots=True)
class LocalHashes:
    """What this file computes itself: PDQ (plain first) on Pillow RGB pixels, its
    quality, pHash, and for originals the SSCD vector and the PDQ of the 8 rotations
    and flips of both the whole image and the picture inside uniform borders (as the
    service's query variants; the whole image's again where there are no borders)."""

    pdq: tuple[bytes, ...]
    quality: int
    phash: bytes
    sscd: bytes | None = None


def local_hashes(data: bytes, with_sscd: bool = False, dihedral: bool = False) -> LocalHashes:
    import imagehash

    from ingest.pdq import DIHEDRAL, pdq_dihedral
    from ingest.trim import content_box

    img = decode_rgb(data)
    pixels = np.asarray(img)
    names = DIHEDRAL if dihedral else ("original",)
    pdqs = pdq_dihedral(pixels, names)
    hashes = [r.raw for r in pdqs.values()]
    if dihedral:
        box = content_box(pixels)
        inner = pdqs if box is None else pdq_dihedral(box.crop(pixels), names)
        hashes += [r.raw for r in inner.values()]
    phash = bytes.fromhex(str(imagehash.phash(img)))
    sscd = None
    if with_sscd:
        from hashdb.signals import SIGNAL_TYPES
        from ingest.sscd import embedding

        sscd = SIGNAL_TYPES["sscd"].quantize(embedding(img))  # type: ignore[attr-defined]
    return LocalHashes(tuple(hashes), pdqs["original"].quality, phash, sscd)


# --- corpus ------------------------------------------------------------------

@dataclass
class Corpus:
    """The originals of one run; their bytes (see `original_bytes`) made on demand.

    The negatives that make up the service's shipped SSCD background
    (`sscd_background.in_background`) are left out entirely: a query's background
    offset would otherwise be measured against the query's own original, and the
    pair distributions would hold pairs the correction was fitted on."""

    positives: list[Original]
    negatives: list[Original]
    background: list[str]  # file names of the negatives left out
    _data: dict[str, bytes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, images: Path, negatives: Path, limit: int | None, seed: int) -> Corpus:
        def listing(folder: Path, prefix: str) -> list[Original]:
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            return [Original(f"{prefix}/{p.name}", p) for p in files]

        pos, neg = listing(images, "pos"), listing(negatives, "neg")
        background = [o.path.name for o in neg if in_background(o.path.name)]
        neg = [o for o in neg if not in_background(o.path.name)]
        if limit is not None and limit < len(pos):
            rng = np.random.default_rng([seed, 1])
            n_neg = max(1, round(len(neg) * limit / len(pos)))
            pos = sorted((pos[i] for i in rng.choice(len(pos), limit, replace=False)),
                         key=lambda o: o.key)
            neg = sorted((neg[i] for i in rng.choice(len(neg), n_neg, replace=False)),
                         key=lambda o: o.key)
        return cls(pos, neg, background)

    def check_background(self) -> dict[str, Any]:
        """Checks the shipped background's names against the corpus: none may be in it.
        Returns what the report says about the images left out."""
        from hashdb.background import load_background

        bg = load_background("")
        assert bg is not None
        shipped = set(bg.names)
        kept = {o.path.name for o in self.originals}
        if shipped & kept:
            raise SystemExit(f"{len(shipped & kept)} background images are in the corpus, "
                             f"e.g. {sorted(shipped & kept)[:3]}")
        left_out = set(self.background)
        return {"left_out": len(left_out), "shipped_vectors": len(shipped),
                "shipped_and_left_out": len(shipped & left_out),
                "shipped_not_found": sorted(shipped - left_out),
                "left_out_not_shipped": sorted(left_out - shipped)}

    @property
    def originals(self) -> list[Original]:
        return self.positives + self.negatives

    def data(self, key: str) -> bytes:
        with self._lock:
            if key in self._data:
                return self._data[key]
        path = next(o.path for o in self.originals if o.key == key)
        data = original_bytes(path)
        with self._lock:
            self._data[key] = data
        return data

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"v{CORPUS_VERSION} max{MAX_SIDE} "
                           f"background-left-out{len(self.background)}".encode())
        for o in self.originals:
            st = o.path.stat()
            h.update(f"{o.key}:{st.st_size}:{st.st_mtime_ns};".encode())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class OriginalFeatures:
    """Local hashes of every original, row i for `keys[i]`."""

    keys: list[str]
    pdq: np.ndarray  # (n, 16, 32) uint8: 8 rotations/flips, plain first; then trimmed
    quality: np.ndarray  # (n,) int
    phash: np.ndarray  # (n, 8) uint8
    sscd: np.ndarray  # (n, 512) int8

    def save(self, path: Path) -> None:
        np.savez(path, keys=np.array(self.keys), pdq=self.pdq, quality=self.quality,
                 phash=self.phash, sscd=self.sscd)

    @classmethod
    def load(cls, path: Path) -> OriginalFeatures:
        with np.load(path) as z:
            return cls([str(k) for k in z["keys"]], z["pdq"], z["quality"], z["phash"],
                       z["sscd"])

    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}


def original_features(corpus: Corpus, cache: Path, workers: int) -> OriginalFeatures:
    path = cache / f"originals-v{FEATURES_VERSION}.npz"
    if path.exists():
        return OriginalFeatures.load(path)
    keys = [o.key for o in corpus.originals]

    def one(key: str) -> LocalHashes:
        return local_hashes(corpus.data(key), with_sscd=True, dihedral=True)

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        hashes = list(progress(pool.map(one, keys), len(keys), "hashing originals"))
    print(f"  {len(keys):,} originals hashed in {time.perf_counter() - started:,.0f} s")
    feats = OriginalFeatures(
        keys,
        np.array([[np.frombuffer(p, np.uint8) for p in h.pdq] for h in hashes], np.uint8),
        np.array([h.quality for h in hashes]),
        np.array([np.frombuffer(h.phash, np.uint8) for h in hashes], np.uint8),
        np.array([np.frombuffer(h.sscd or b"", np.int8) for h in hashes], np.int8),
    )
    feats.save(path)
    return feats


def progress[T](items: Iterable[T], total: int, what: str) -> Iterator[T]:
    """Yields items, printing a line every ~10% (the log stays readable in a file)."""
    step = max(1, total // 4) if total < 200 else max(1, total // 10)
    started = time.perf_counter()
    for i, item in enumerate(items, 1):
        if i % step == 0 or i == total:
            rate = i / max(1e-9, time.perf_counter() - started)
            print(f"  {what}: {i:,}/{total:,} ({rate:,.1f}/s)", flush=True)
        yield item


# --- near-duplicates -----------------------------------------------------------

@dataclass
class NearDuplicates:
    """Groups of originals that are one picture; `kept` holds one per group."""

    groups: list[list[str]]
    kept: list[str]
    evidence: list[dict[str, object]]

    @property
    def dropped(self) -> set[str]:
        return {k for g in self.groups for k in g} - set(self.kept)


def near_duplicates(corpus: Corpus, feats: OriginalFeatures, cache: Path) -> NearDuplicates:
    """Pairs with PDQ <= 31 in any rotation/flip, of the whole image or of the picture
    inside uniform borders (the service's variants; both of quality >= 50), are one picture;
    pairs with SSCD cosine >= 0.6 only if an alignment check confirms it (see
    `robustness_stats.Alignment`): SSCD alone scores distinct star fields and icons of
    one family (same frame, different pictogram) that high. Groups are the connected
    components; the one kept is a positive if any, else the first name.

    Raw cosine here, not the service's background-corrected score: the correction
    only ever lowers a score, so raw cosine proposes every pair the corrected score
    would and more, and the alignment check judges each one anyway."""
    path = cache / f"near-duplicates-v{NEAR_DUP_VERSION}.json"
    if path.exists():
        raw = json.loads(path.read_text())
        return NearDuplicates(raw["groups"], raw["kept"], raw["evidence"])
    n = len(feats.keys)
    good = feats.quality >= PDQ_MIN_QUALITY
    dihedral = HashRows.of([[r.tobytes() for r in feats.pdq[i]] if good[i] else []
                            for i in range(n)])
    stored = HashRows.of([[feats.pdq[i, 0].tobytes(), feats.pdq[i, 8].tobytes()] if good[i]
                          else [] for i in range(n)])
    d = min_hamming(dihedral, stored)
    d = np.minimum(d, d.T)
    vectors = unit_vectors([v.tobytes() for v in feats.sscd])
    cos = cosine_matrix(vectors, vectors)
    iu = np.triu_indices(n, 1)
    candidates = np.flatnonzero((d[iu] <= PDQ_THRESHOLD) | (cos[iu] >= NEAR_DUP_COSINE))
    greys: dict[int, np.ndarray] = {}

    def grey(i: int) -> np.ndarray:
        if i not in greys:
            greys[i] = grey_for_alignment(corpus.data(feats.keys[i]))
        return greys[i]

    edges: list[tuple[int, int]] = []
    evidence: list[dict[str, object]] = []
    for c in progress(candidates, len(candidates), "near-duplicate candidates"):
        a, b = int(iu[0][c]), int(iu[1][c])
        pdq_d, cosine = int(d[a, b]), float(cos[a, b])
        al = None if pdq_d <= PDQ_THRESHOLD else align(grey(a), grey(b))
        same = al is None or al.same_picture()
        evidence.append({"a": feats.keys[a], "b": feats.keys[b], "pdq": pdq_d,
                         "cosine": round(cosine, 4), "same": same,
                         "alignment": None if al is None else {
                             "inliers": al.inliers, "agreement": round(al.agreement, 3),
                             "mirrored": al.mirrored}})
        if same:
            edges.append((a, b))
    groups = [[feats.keys[i] for i in g] for g in components(n, edges)]
    kept = [next((k for k in g if k.startswith("pos/")), g[0]) for g in groups]
    result = NearDuplicates(groups, kept, evidence)
    path.write_text(json.dumps({"groups": groups, "kept": kept, "evidence": evidence}))
    return result


def print_near_duplicates(nd: NearDuplicates, n_originals: int) -> None:
    same = [e for e in nd.evidence if e["same"]]
    refused = [e for e in nd.evidence if not e["same"]]
    print(f"\n## Near-duplicates: {len(nd.dropped):,} of {n_originals:,} originals dropped "
          f"({len(nd.groups)} groups; {len(same):,} pairs judged one picture, "
          f"{len(refused):,} SSCD-only pairs refused by the alignment check)")
    for g in sorted(nd.groups, key=len, reverse=True)[:6]:
        shown = ", ".join(k.split("/", 1)[1] for k in g[:8])
        print(f"  group of {len(g)}: {shown}{' ...' if len(g) > 8 else ''}")
    print("  pairs refused (similar-looking, judged distinct), highest cosine first:")
    for e in sorted(refused, key=lambda e: -float(e["cosine"]))[:5]:  # type: ignore[arg-type]
        print(f"    {e['a']} ~ {e['b']}: cosine {e['cosine']}, pdq {e['pdq']}, "
              f"alignment {e['alignment']}")


# --- queries -------------------------------------------------------------------

def split_members(positives: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Half the positives (seeded) are contributed; the other half never are."""
    order = np.random.default_rng([seed, 2]).permutation(len(positives))
    half = len(positives) // 2
    members = sorted(positives[i] for i in order[:half])
    return members, sorted(positives[i] for i in order[half:])


def plan_queries(members: list[str], nonmembers: list[str], negatives: list[str], seed: int,
                 target_nonmatching: int) -> list[Query]:
    """Every edit of every positive; each negative as it is plus enough random edits
    (the same number each, seeded) for `target_nonmatching` non-matching queries."""
    queries = [Query(k, e, "member") for k in members for e in EDITS]
    queries += [Query(k, e, "nonmember") for k in nonmembers for e in EDITS]
    missing = target_nonmatching - len(nonmembers) * len(EDITS) - len(negatives)
    per_negative = max(0, math.ceil(missing / max(1, len(negatives))))
    edits = [e for e in EDITS if EDITS[e].group != "control"]
    for k in negatives:
        queries.append(Query(k, "original", "negative"))
        rng = np.random.default_rng([seed, 3, zlib.crc32(k.encode())])
        picked = rng.choice(len(edits), min(per_negative, len(edits)), replace=False)
        queries += [Query(k, edits[i], "negative") for i in sorted(picked)]
    return queries


def query_bytes(corpus: Corpus, q: Query, seed: int, decoded: Image.Image | None) -> bytes:
    if q.edit == "original":
        return corpus.data(q.key)  # the stored bytes themselves: md5/sha256 must find it
    img = decoded if decoded is not None else decode_rgb(corpus.data(q.key))
    return EDITS[q.edit].apply(img, seed, q.key)

