"""Whether two corpus images are one picture: an ORB alignment check for the pairs
SSCD alone scores high (see `Alignment`), and the connected components of the
pairs judged one picture. Used to drop near-duplicates from the robustness corpus.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True, slots=True)
class Alignment:
    """How well image B, aligned onto A, reproduces A: `inliers` ORB matches agree with
    one similarity transform (mirrored B tried too); `agreement` is the better of the share
    of content pixels (not A's background) whose blurred grey levels agree within 32, and
    the share of edges found in both (for recoloured copies)."""

    inliers: int
    agreement: float
    scale: float
    mirrored: bool

    def same_picture(self) -> bool:
        return self.inliers >= 15 and self.agreement >= 0.9 and 0.2 <= self.scale <= 5


_ORB_SIDE = 512


def grey_for_alignment(data: bytes) -> np.ndarray:
    """The image as grey, longest side 512, for `align`."""
    g = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if g is None:
        raise ValueError("OpenCV cannot decode this image")
    scale = _ORB_SIDE / max(g.shape)
    size = (max(16, round(g.shape[1] * scale)), max(16, round(g.shape[0] * scale)))
    return cv2.resize(g, size, interpolation=cv2.INTER_AREA)


def align(a: np.ndarray, b: np.ndarray) -> Alignment:
    """The better of aligning b and mirrored b onto a (see Alignment)."""
    plain = _align_one(a, b, False)
    mirrored = _align_one(a, np.ascontiguousarray(b[:, ::-1]), True)
    return max(plain, mirrored, key=lambda x: (x.same_picture(), x.agreement, x.inliers))


def _align_one(a: np.ndarray, b: np.ndarray, mirrored: bool) -> Alignment:
    none = Alignment(0, 0.0, math.nan, mirrored)
    orb = cv2.ORB_create(1500)  # type: ignore[attr-defined]
    ka, da = orb.detectAndCompute(a, None)
    kb, db = orb.detectAndCompute(b, None)
    if da is None or db is None or len(da) < 8 or len(db) < 8:
        return none
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(db, da, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < 0.8 * m[1].distance]
    if len(good) < 8:
        return none
    src = np.array([kb[m.queryIdx].pt for m in good], np.float32)
    dst = np.array([ka[m.trainIdx].pt for m in good], np.float32)
    m, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=4)
    # a degenerate transform crashes warpAffine: check before warping
    if m is None or not np.isfinite(m).all():
        return none
    inliers = int(mask.sum())
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if not 0.2 <= scale <= 5:
        return Alignment(inliers, 0.0, scale, mirrored)
    size = (a.shape[1], a.shape[0])
    warped = cv2.warpAffine(cv2.GaussianBlur(b, (0, 0), 2), m, size, flags=cv2.INTER_LINEAR)
    overlap = cv2.warpAffine(np.ones_like(b), m, size, flags=cv2.INTER_NEAREST) > 0
    if overlap.sum() < 0.25 * a.size:
        return Alignment(inliers, 0.0, scale, mirrored)
    blurred = cv2.GaussianBlur(a, (0, 0), 2).astype(np.int16)
    ring = np.concatenate([blurred[:2].ravel(), blurred[-2:].ravel(),
                           blurred[:, :2].ravel(), blurred[:, -2:].ravel()])
    background = np.median(ring)
    warped16 = warped.astype(np.int16)
    # content: pixels either image draws on, so a shared white background proves nothing
    content = overlap & ((np.abs(blurred - background) > 32) | (np.abs(warped16 - background) > 32))
    if content.sum() < 0.02 * a.size:
        return Alignment(inliers, 0.0, scale, mirrored)
    levels = float((np.abs(blurred - warped16)[content] <= 32).mean())
    return Alignment(inliers, max(levels, _edge_agreement(blurred, warped, overlap)), scale,
                     mirrored)


def _edge_agreement(a: np.ndarray, b: np.ndarray, overlap: np.ndarray) -> float:
    """The share of each image's edges that lie within 2 pixels of the other's (the lesser
    of the two): a recoloured drawing keeps its edges where its grey levels change."""
    inside = cv2.erode(overlap.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    ea = (cv2.Canny(a.astype(np.uint8), 20, 60) > 0) & inside
    eb = (cv2.Canny(b, 20, 60) > 0) & inside
    if ea.sum() < 50 or eb.sum() < 50:
        return 0.0
    kernel = np.ones((5, 5), np.uint8)
    near_a = cv2.dilate(ea.astype(np.uint8), kernel) > 0
    near_b = cv2.dilate(eb.astype(np.uint8), kernel) > 0
    return float(min((ea & near_b).sum() / ea.sum(), (eb & near_a).sum() / eb.sum()))


def components(n: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components (of size > 1) of the graph with these edges, sorted."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])

