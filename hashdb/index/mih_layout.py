"""What the tables of a multi-index hashing index are (see `hashdb.index.mih`):
how many substrings of how many bits, which hash bits form each substring, and
the cost model that picks them for a size and a search radius.

Exactness does not depend on any choice made here: for any `m` disjoint
substrings of any bits, probed to radii `r_t` with `sum(r_t + 1) > r`, a hash
within `r` of the query is within `r_t` in some substring `t` (else its distance
would be at least `sum(r_t + 1)`), so it is found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import numpy as np

_MAX_OFFSET_BYTES_PER_HASH = 48  # memory cap on the direct-address offsets


@dataclass(frozen=True, slots=True)
class Layout:
    """`substrings` tables of `width` bits each; 0 substrings means brute force."""

    substrings: int
    width: int

    def radius(self, max_distance: int) -> int:
        """The largest probe radius of a table."""
        return max(self.radii(max_distance))

    def radii(self, max_distance: int) -> list[int]:
        """Probe radius of each table, smallest with `sum(r_t + 1) > max_distance`:
        `floor(r / m)` or one less (-1: the table is not probed). At 10M, 11 tables
        and r = 31, one table probes to radius 1 instead of 2: 8% fewer probes."""
        per, extra = divmod(max_distance + 1, self.substrings)
        return [min(per + (t < extra), self.width + 1) - 1 for t in range(self.substrings)]

    def probes(self, max_distance: int) -> int:
        radii = self.radii(max_distance)
        return sum(sum(math.comb(self.width, i) for i in range(r + 1)) for r in radii)

    def cost(self, n: int, max_distance: int) -> float:
        """Expected memory reads per query: probes plus candidates."""
        probes = self.probes(max_distance)
        return probes * (1.0 + n / 2.0**self.width)


BRUTE_FORCE = Layout(0, 0)
# A sequential popcount over one row costs about a sixth of a random read.
_BRUTE_COST_PER_ROW = 1 / 6


def brute_force_cost(n: int) -> float:
    return n * _BRUTE_COST_PER_ROW


def choose_layout(n: int, bits: int, max_distance: int, scan: bool = True) -> Layout:
    """The cheapest exact layout for `n` hashes at `max_distance`, within the
    memory cap on offsets; brute force if nothing beats a scan (unless `scan` is
    False: then the best tables whatever they cost)."""
    best, best_cost = BRUTE_FORCE, brute_force_cost(n) if scan else math.inf
    for width in range(4, min(bits, 30) + 1):
        layout = Layout(bits // width, width)
        offset_bytes = layout.substrings * 4 * (2**width + 1)
        if offset_bytes > max(_MAX_OFFSET_BYTES_PER_HASH * n, 1 << 20):
            continue
        cost = layout.cost(n, max_distance)
        if cost < best_cost:
            best, best_cost = layout, cost
    return best


@lru_cache(maxsize=64)
def flip_masks(width: int, radius: int) -> np.ndarray:
    """Every `width`-bit mask with at most `radius` bits set (read-only, cached:
    making the 277 masks of a 10M index took half of a single lookup's time)."""
    masks = [
        sum(1 << b for b in bits)
        for k in range(min(radius, width) + 1)
        for bits in combinations(range(width), k)
    ]
    out = np.array(masks, dtype=np.uint64)
    out.flags.writeable = False
    return out


@dataclass(frozen=True, slots=True)
class SearchPlan:
    """What a search at one radius needs from a layout, computed once."""

    masks: np.ndarray  # flip masks, sorted by popcount
    radii: np.ndarray  # (substrings,) int64 probe radius of each table
    probes: int  # keys probed per query
    scan: bool  # a scan of `n` rows is expected to be cheaper


@lru_cache(maxsize=256)
def search_plan(layout: Layout, n: int, max_distance: int) -> SearchPlan:
    if not layout.substrings:
        empty = np.zeros(0, np.uint64)
        return SearchPlan(empty, np.zeros(0, np.int64), 0, True)
    radii = np.array(layout.radii(max_distance), np.int64)
    radii.flags.writeable = False
    return SearchPlan(flip_masks(layout.width, layout.radius(max_distance)), radii,
                      layout.probes(max_distance),
                      layout.cost(n, max_distance) >= brute_force_cost(n))


def choose_bit_order(hashes: np.ndarray, layout: Layout, sample: int = 20_000) -> np.ndarray:
    """Which hash bit sits at each key position: substring t of a hash is the
    bits `order[t * width:(t + 1) * width]`. Any order is exact (see the module
    docstring); a good one fills buckets evenly. Correlated or biased bits in one
    substring crowd its keys, so, greedily on a sample: the worst bits are left
    out of every substring, then each bit (most correlated first) joins the
    substring with room where its summed squared correlation is lowest."""
    bits = hashes.shape[1] * 64
    m, width = layout.substrings, layout.width
    if not m or len(hashes) < 1000:
        return np.arange(bits, dtype=np.int16)
    rows = np.ascontiguousarray(hashes[:: max(1, len(hashes) // sample)])
    x = np.unpackbits(rows.view(np.uint8), axis=1, bitorder="little").astype(np.float32)
    p = x.mean(axis=0)
    x -= p
    std = np.sqrt((x * x).mean(axis=0)) + 1e-6
    corr2 = np.square((x.T @ x) / len(x) / np.outer(std, std))
    np.fill_diagonal(corr2, 0.0)
    # Bias costs like correlation: a bit with p = 0.5 +- e carries ~(2e)**2 less entropy.
    badness = corr2.sum(axis=1) + np.square(2 * p - 1) * bits
    by_badness = np.argsort(-badness, kind="stable")
    left_out, placed = by_badness[: bits - m * width], by_badness[bits - m * width :]
    members: list[list[int]] = [[] for _ in range(m)]
    load = np.zeros(m)
    for bit in placed.tolist():
        cost = np.array([corr2[bit, g].sum() if g else 0.0 for g in members]) + load * 1e-9
        cost[[len(g) == width for g in members]] = np.inf
        t = int(np.argmin(cost))
        members[t].append(bit)
        load[t] += 1
    order = [bit for g in members for bit in sorted(g)] + sorted(left_out.tolist())
    return np.array(order, dtype=np.int16)


def key_lut(order: np.ndarray) -> np.ndarray:
    """`lut[j, v]`: the key words of a hash whose only nonzero byte j is v."""
    bits = len(order)
    position = np.empty(bits, np.int64)
    position[order] = np.arange(bits)
    lut = np.zeros((bits // 8, 256, bits // 64), np.uint64)
    values = np.arange(256)
    for bit, p in enumerate(position.tolist()):
        on = (values >> (bit % 8)) & 1 == 1
        lut[bit // 8, on, p // 64] |= np.uint64(1 << (p % 64))
    return lut
