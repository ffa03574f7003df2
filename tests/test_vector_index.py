"""VectorIndex against the brute-force oracle on SSCD-like int8 vectors, in both
regimes (one exact list, and the IVF forced at a few thousand vectors): hits and
distances bit for bit, thresholds met exactly, writes, rebuilds, snapshots, threads."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from conftest import as_sets
from hashdb.index.base import Hits, Index, brute_force_vector_search, index_for
from hashdb.index.vector import MAX_HITS, FlatVectorIndex, VectorIndex
from hashdb.index.vector_ivf import nlist_for
from hashdb.signals import SIGNAL_TYPES, VectorSignalType

SSCD = SIGNAL_TYPES["sscd"]
DIMS = 512
N = 3000


class Tiny(VectorSignalType):
    name = "tiny"
    dims = 64
    bits = dims * 8
    scale = 508.0
    default_max_distance = 0.25
    candidate_max_distance = 0.45
    media_types: ClassVar[frozenset[str]] = frozenset()


def quantize(x: np.ndarray) -> np.ndarray:
    """Rows as SSCD values: unit vectors times 508, rounded, clipped, as bytes."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.clip(np.rint(unit * SSCD.scale), -127, 127).astype(np.int8).view(np.uint8)


def sscd_like(rng: np.random.Generator, n: int, clusters: int = 60) -> np.ndarray:
    """Directions around cluster centres (cosine ~0.2 within a cluster, ~0 across)."""
    centres = rng.standard_normal((clusters, DIMS))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((n, DIMS)) / np.sqrt(DIMS)
    return quantize(0.5 * centres[rng.integers(0, clusters, n)] + noise)


def near(rng: np.random.Generator, hashes: np.ndarray, cosine: float) -> np.ndarray:
    """Each vector turned by `cosine` towards a random orthogonal direction."""
    v = hashes.view(np.int8).astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    w = rng.standard_normal(v.shape)
    w -= (w * v).sum(axis=1, keepdims=True) * v
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    return quantize(cosine * v + np.sqrt(1 - cosine**2) * w)


def oracle(ids: np.ndarray, hashes: np.ndarray, queries: np.ndarray, d: float) -> Hits:
    return brute_force_vector_search(ids, hashes, queries, d)


def assert_exact(index: VectorIndex, ids, hashes, queries, d: float) -> Hits:  # type: ignore[no-untyped-def]
    got = index.search(queries, d)
    assert as_sets(got) == as_sets(oracle(ids, hashes, queries, d))
    assert got.distances.dtype == np.float32
    return got


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(20260611)


@pytest.fixture(scope="module")
def data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.choice(2**40, size=N, replace=False).astype(np.int64)
    return ids, sscd_like(rng, N)


def build(regime: str, ids: np.ndarray, hashes: np.ndarray, **kw) -> VectorIndex:  # type: ignore[no-untyped-def]
    """`flat`: one exact list; `ivf`: the IVF, forced by a threshold below the size."""
    threshold = 10**9 if regime == "flat" else 500
    index = VectorIndex(SSCD, flat_threshold=threshold, **kw)
    index.add(ids, hashes)
    index.compact()
    assert (index.nlist == 1) == (regime == "flat")
    return index


@pytest.fixture(scope="module", params=["flat", "ivf"])
def built(request, data) -> tuple[VectorIndex, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    ids, hashes = data
    return build(request.param, ids, hashes), ids, hashes


def test_index_for_sscd_is_the_vector_index() -> None:
    index = index_for(SSCD)
    assert isinstance(index, VectorIndex)
    assert isinstance(index, Index)


def test_near_duplicates_and_strangers_match_the_oracle(built, rng) -> None:  # type: ignore[no-untyped-def]
    index, ids, hashes = built
    targets = rng.integers(0, N, size=60)
    queries = np.concatenate(
        [hashes[targets[:20]]]
        + [near(rng, hashes[targets], c) for c in (0.95, 0.8, 0.6, 0.5)]
        + [sscd_like(rng, 40)]
    )
    for d in (0.0, 0.25, 0.45, 0.6):
        got = assert_exact(index, ids, hashes, queries, d)
    # Stored vectors find themselves (at 0.0 only if float32 rounding says 0, not 6e-8).
    got = index.search(queries[:20], 0.25)
    assert all(ids[t] in got.of(i)[0] for i, t in enumerate(targets[:20]))
    # Hits come nearest first.
    got = index.search(queries, 0.45)
    assert all(np.all(np.diff(got.of(i)[1]) >= 0) for i in range(len(got)))


def test_recall_on_near_duplicates_at_cosine_0_6_and_above(built, rng) -> None:  # type: ignore[no-untyped-def]
    index, ids, hashes = built
    targets = rng.choice(N, size=300, replace=False)
    for cosine in (0.95, 0.8, 0.6):
        queries = near(rng, hashes[targets], cosine)
        want = oracle(ids, hashes, queries, 0.45)
        got = index.search(queries, 0.45)
        # Every planted target is within 0.45 (cosine 0.55) and is found.
        assert all(ids[t] in want.of(i)[0] for i, t in enumerate(targets))
        assert as_sets(got) == as_sets(want), f"cosine {cosine}"
    assert index.expected_recall >= 0.99


def structured(positions: np.ndarray) -> np.ndarray:
    """64 components of 64 at `positions`: norm exactly 512, so a pair sharing k of
    its positions has cosine exactly k / 64."""
    v = np.zeros(DIMS, np.int8)
    v[positions] = 64
    return v.view(np.uint8)


@pytest.mark.parametrize("regime", ["flat", "ivf"])
def test_distance_exactly_at_the_threshold_is_a_match(regime: str, data, rng) -> None:  # type: ignore[no-untyped-def]
    ids, hashes = data
    # Every list probed: this is about exact distances, not recall (sparse vectors
    # like these sit far from every centroid).
    index = build(regime, ids, hashes, nprobe=10**6)
    base = rng.permutation(DIMS)
    stored = [structured(np.concatenate([base[:k], base[64 : 128 - k]])) for k in (48, 47, 35, 34)]
    query = structured(base[:64])[None, :]
    new_ids = np.array([2**41, 2**41 + 1, 2**41 + 2, 2**41 + 3], np.int64)
    index.add(new_ids, np.stack(stored))
    try:
        all_ids = np.concatenate([ids, new_ids])
        all_hashes = np.concatenate([hashes, np.stack(stored)])
        # Shares 48/64 -> 1 - 0.75 = 0.25 exactly; 35/64 -> 0.453125 exactly.
        for d, inside, outside in ((0.25, 2**41, 2**41 + 1), (0.453125, 2**41 + 2, 2**41 + 3)):
            got = assert_exact(index, all_ids, all_hashes, query, d)
            hit_ids, dist = got.of(0)
            assert inside in hit_ids and outside not in hit_ids
            assert dist[list(hit_ids).index(inside)] == np.float32(d)
        # A random near-duplicate pair: its own float32 distance as the threshold.
        target = int(rng.integers(N))
        q = near(rng, hashes[target : target + 1], 0.7)
        pair = oracle(ids[target : target + 1], hashes[target : target + 1], q, 2.0)
        d = float(pair.distances[0])
        assert ids[target] in assert_exact(index, all_ids, all_hashes, q, d).of(0)[0]
        below = float(np.nextafter(np.float32(d), np.float32(0)))
        assert ids[target] not in assert_exact(index, all_ids, all_hashes, q, below).of(0)[0]
    finally:
        index.remove(new_ids)
    assert len(index) == N


@pytest.mark.parametrize("regime", ["flat", "ivf"])
def test_adds_removes_and_replacements(regime: str, data, rng) -> None:  # type: ignore[no-untyped-def]
    ids, hashes = data
    index = build(regime, ids, hashes)
    truth = dict(zip(ids.tolist(), hashes, strict=True))
    gone = rng.choice(ids, size=200, replace=False)
    index.remove(gone)
    for i in gone.tolist():
        del truth[i]
    index.remove(np.array([7, 8, 2**50], np.int64))  # unknown ids: a no-op
    index.remove(np.zeros(0, np.int64))
    # Re-adding present ids replaces their vectors; the last of a repeated id wins.
    kept = np.array(list(truth), np.int64)
    replaced = rng.choice(kept, size=100, replace=False)
    fresh = sscd_like(rng, 101)
    twice = np.concatenate([replaced, replaced[:1]])
    index.add(twice, fresh)
    for i, h in zip(twice.tolist(), fresh, strict=True):
        truth[i] = h
    assert len(index) == len(truth) == N - 200
    t_ids = np.array(list(truth), np.int64)
    t_hashes = np.stack(list(truth.values()))
    old = hashes[np.isin(ids, replaced)]
    queries = np.concatenate([hashes[np.isin(ids, gone)][:50], old[:50], fresh])
    got = assert_exact(index, t_ids, t_hashes, queries, 0.25)
    found = set(got.ids.tolist())
    assert not found & set(gone.tolist())
    assert int(replaced[0]) in got.of(len(queries) - 1)[0]  # the later of the two values
    assert int(replaced[0]) not in got.of(100)[0]


def test_vectors_of_unusual_norm_are_found_exactly(built, rng) -> None:  # type: ignore[no-untyped-def]
    index, ids, hashes = built
    small = rng.integers(-3, 4, size=(20, DIMS)).astype(np.int8)  # norm ~45
    large = (np.sign(rng.standard_normal((20, DIMS))) * 127).astype(np.int8)  # norm ~2873
    odd = np.concatenate([small, large]).view(np.uint8)
    odd_ids = np.arange(40, dtype=np.int64) + 2**42
    index.add(odd_ids, odd)
    try:
        all_ids, all_hashes = np.concatenate([ids, odd_ids]), np.concatenate([hashes, odd])
        queries = np.concatenate([odd, near(rng, hashes[:20], 0.8), hashes[:5]])
        for d in (0.0, 0.25, 0.45):
            got = assert_exact(index, all_ids, all_hashes, queries, d)
        assert set(odd_ids.tolist()) <= set(got.ids.tolist())
    finally:
        index.remove(odd_ids)


@pytest.mark.parametrize("regime", ["flat", "ivf"])
def test_hits_are_capped_at_the_nearest(regime: str, data, rng) -> None:  # type: ignore[no-untyped-def]
    ids, hashes = data
    copies = np.stack([near(rng, hashes[:1], c)[0] for c in np.linspace(0.9, 0.999, 150)])
    all_ids = np.concatenate([ids, np.arange(150, dtype=np.int64) + 2**43])
    all_hashes = np.concatenate([hashes, copies])
    index = build(regime, all_ids, all_hashes)
    got = index.search(hashes[:1], 0.45)
    want = oracle(all_ids, all_hashes, hashes[:1], 0.45)
    assert len(want.ids) > MAX_HITS
    assert len(got.ids) == MAX_HITS
    nearest = np.sort(want.distances)[:MAX_HITS]
    assert np.array_equal(got.distances, nearest)
    assert set(got.ids.tolist()) <= set(want.ids.tolist())


def test_empty_index_and_empty_batches() -> None:
    index = VectorIndex(SSCD)
    got = index.search(np.zeros((3, DIMS), np.uint8), 0.45)
    assert got.lims.tolist() == [0, 0, 0, 0] and len(got.ids) == 0
    index.add(np.array([1], np.int64), quantize(np.ones((1, DIMS))))
    assert len(index.search(np.zeros((0, DIMS), np.uint8), 0.45)) == 0
    with pytest.raises(ValueError):
        index.add(np.array([1, 2], np.int64), quantize(np.ones((1, DIMS))))


def test_growth_rebuilds_in_the_background(data, rng) -> None:  # type: ignore[no-untyped-def]
    ids, hashes = data
    index = VectorIndex(SSCD, flat_threshold=500, growth=2.0)
    index.add(ids[:400], hashes[:400])
    index.compact()
    assert index.nlist == 1  # below the threshold: one exact list
    index.add(ids[400:1000], hashes[400:1000])
    index.compact()
    first = index.nlist
    assert first == nlist_for(1000)
    index.add(ids[1000:], hashes[1000:])  # 3x the trained size
    index.compact()
    assert index.nlist == nlist_for(N) and index.last_rebuild_seconds is not None
    assert_exact(index, ids, hashes, hashes[::10], 0.25)


def test_searches_run_while_writes_and_a_rebuild_happen(data, rng) -> None:  # type: ignore[no-untyped-def]
    ids, hashes = data
    stable = 1000
    index = VectorIndex(SSCD, flat_threshold=500, growth=1.5)
    index.add(ids[:stable], hashes[:stable])
    index.compact()
    nlist_before = index.nlist
    vectors = dict(zip(ids.tolist(), hashes, strict=True))
    errors: list[BaseException] = []
    done = threading.Event()
    probe = rng.choice(stable, size=50, replace=False)

    def reader() -> None:
        try:
            while not done.is_set():
                got = index.search(hashes[probe], 0.25)
                for i, p in enumerate(probe):
                    hit_ids, dist = got.of(i)
                    assert ids[p] in hit_ids  # never lost mid-write
                    for h, d in zip(hit_ids.tolist(), dist.tolist(), strict=True):
                        want = oracle(np.array([h]), vectors[h][None], hashes[p : p + 1], 2.0)
                        assert want.distances[0] == np.float32(d)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    removed = []
    for lo in range(stable, N, 250):  # adds that trigger a rebuild, and removes during it
        index.add(ids[lo : lo + 250], hashes[lo : lo + 250])
        removed.extend(ids[lo : lo + 20].tolist())
        index.remove(ids[lo : lo + 20])
    index.compact()
    done.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert index.nlist > nlist_before and index.last_rebuild_seconds is not None
    keep = ~np.isin(ids, removed)
    assert len(index) == int(keep.sum())
    assert_exact(index, ids[keep], hashes[keep], hashes[::7], 0.25)


def test_writes_made_during_a_rebuild_are_kept(data, rng, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Writes while the lists are copied out (ids moving between lists already
    copied and not yet copied), and after the log was replayed but before the swap."""
    ids, hashes = data
    index = VectorIndex(SSCD, flat_threshold=500, growth=1.5)
    index.add(ids[:1000], hashes[:1000])
    index.compact()
    nlist = index.nlist
    truth = dict(zip(ids[:1000].tolist(), hashes[:1000], strict=True))
    copying, copy_resume, swapping, swap_resume = (threading.Event() for _ in range(4))
    copy_list, replay = VectorIndex._copy_list, VectorIndex._replay

    def paused_copy(self, part, list_no):  # type: ignore[no-untyped-def]
        if list_no == nlist // 2 and not copying.is_set():
            copying.set()
            copy_resume.wait(10)
        return copy_list(self, part, list_no)

    def paused_replay(state, writes) -> None:  # type: ignore[no-untyped-def]
        replay(state, writes)
        if not swapping.is_set():  # the first replay runs without the lock
            swapping.set()
            swap_resume.wait(10)

    monkeypatch.setattr(VectorIndex, "_copy_list", paused_copy)
    monkeypatch.setattr(VectorIndex, "_replay", staticmethod(paused_replay))

    def write(add: np.ndarray, values: np.ndarray, remove: np.ndarray) -> None:
        index.add(add, values)
        truth.update(zip(add.tolist(), values, strict=True))
        index.remove(remove)
        for i in remove.tolist():
            truth.pop(i, None)

    write(ids[1000:1600], hashes[1000:1600], ids[:0])  # 1.6x the trained size: a rebuild
    assert copying.wait(10)
    write(ids[:1000], sscd_like(rng, 1000), ids[:50])  # every old id moves
    copy_resume.set()
    assert swapping.wait(10)
    write(ids[100:300], hashes[1700:1900], ids[1000:1050])
    write(ids[1600:1700], hashes[1600:1700], ids[300:310])
    swap_resume.set()
    index.compact()
    # The first rebuild kept only the 600 ids not written meanwhile (the log re-added
    # the rest), which left it 2.6x past its trained size: a second one followed.
    assert index.nlist == nlist_for(len(truth)) != nlist
    t_ids, t_hashes = np.array(list(truth), np.int64), np.stack(list(truth.values()))
    assert len(index) == len(truth)
    assert_exact(index, t_ids, t_hashes, np.concatenate([t_hashes, hashes[:300]]), 0.25)


@pytest.mark.parametrize("regime", ["flat", "ivf"])
def test_save_load_round_trip(regime: str, data, rng, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ids, hashes = data
    index = build(regime, ids, hashes)
    path = tmp_path / "sscd.index"
    index.save(path)
    loaded = VectorIndex(SSCD)
    loaded.load(path)
    assert len(loaded) == len(index) and loaded.nlist == index.nlist
    assert loaded.nprobe == index.nprobe
    queries = np.concatenate([hashes[:30], near(rng, hashes[30:90], 0.7)])
    assert as_sets(loaded.search(queries, 0.45)) == as_sets(index.search(queries, 0.45))
    # Still writable: the id map came back too.
    loaded.remove(ids[:10])
    loaded.add(ids[10:20], hashes[20:30])
    t_hashes = hashes.copy()
    t_hashes[10:20] = hashes[20:30]
    assert_exact(loaded, ids[10:], t_hashes[10:], np.concatenate([hashes[:30], queries]), 0.25)


def test_load_rejects_another_dimension_or_format(tmp_path: Path) -> None:
    tiny = VectorIndex(Tiny())
    tiny.add(np.arange(5, dtype=np.int64), np.ones((5, 64), np.uint8))
    tiny.save(tmp_path / "tiny.index")
    with pytest.raises(ValueError):
        VectorIndex(SSCD).load(tmp_path / "tiny.index")
    flat = FlatVectorIndex(SSCD)
    flat.add(np.arange(5, dtype=np.int64), np.ones((5, DIMS), np.uint8))
    flat.save(tmp_path / "flat.index")
    index = VectorIndex(SSCD)
    with pytest.raises(ValueError):
        index.load(tmp_path / "flat.index")
    assert len(index) == 0
