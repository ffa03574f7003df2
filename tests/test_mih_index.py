"""MultiIndexHammingIndex against the brute-force oracle: exact at every radius,
on uniform and skewed hashes, through adds, removes, merges and snapshots."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import as_sets
from hashdb.index import mih
from hashdb.index.base import brute_force_search
from hashdb.index.mih import Layout, MultiIndexHammingIndex, choose_layout
from hashdb.signals import SIGNAL_TYPES

PDQ = SIGNAL_TYPES["pdq"]


def uniform_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 32), dtype=np.uint8)


def skewed_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Correlated bits with biased marginals: a thresholded low-rank projection."""
    weights = rng.normal(size=(8, 256))
    bias = rng.uniform(-0.85, 0.85, size=256)  # bit probabilities in ~[0.2, 0.8]
    latent = rng.normal(size=(n, 8)) @ weights / np.sqrt(8)
    bits = latent + rng.normal(size=(n, 256)) + bias * np.sqrt(2) > 0
    return np.packbits(bits, axis=1)


def flip(rng: np.random.Generator, hashes: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Each hash with exactly `distances[i]` random bits flipped."""
    out = hashes.copy()
    for row, d in zip(out, distances, strict=True):
        bits = rng.choice(256, size=int(d), replace=False)
        np.bitwise_xor.at(row, bits // 8, (1 << (bits % 8)).astype(np.uint8))
    return out


def assert_exact(index: MultiIndexHammingIndex, ids, hashes, queries, radius) -> None:  # type: ignore[no-untyped-def]
    got = index.search(queries, radius)
    want = brute_force_search(ids, hashes, queries, radius)
    assert as_sets(got) == as_sets(want)
    # No (query, id) pair is reported twice.
    query_of_hit = np.repeat(np.arange(len(got)), np.diff(got.lims))
    assert len(got.ids) == len(set(zip(query_of_hit, got.ids, strict=True)))


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(20261128)


def built(ids: np.ndarray, hashes: np.ndarray, **kw) -> MultiIndexHammingIndex:  # type: ignore[no-untyped-def]
    index = MultiIndexHammingIndex(PDQ, **kw)
    index.add(ids, hashes)
    index.compact()
    return index


@pytest.mark.parametrize("make", [uniform_hashes, skewed_hashes])
def test_exact_at_every_radius_with_planted_pairs(rng: np.random.Generator, make) -> None:  # type: ignore[no-untyped-def]
    n = 50_000
    hashes = make(rng, n)
    ids = rng.choice(2**40, size=n, replace=False).astype(np.int64)
    index = built(ids, hashes)
    assert index.layout.substrings > 1  # the MIH path, not the brute-force fallback
    targets = rng.integers(0, n, size=200)
    distances = np.concatenate([np.arange(0, 41), rng.integers(0, 41, size=159)])
    queries = flip(rng, hashes[targets], distances)
    # One oracle run at the widest radius, filtered for the others: the oracle is slow.
    wide = as_sets(brute_force_search(ids, hashes, queries, 64))
    for radius in (0, 1, 8, 15, 31, 32, 40, 64):
        want = [{(i, d) for i, d in hits if d <= radius} for hits in wide]
        assert as_sets(index.search(queries, radius)) == want
    assert_exact(index, ids, hashes, queries[:3], 256)
    # batched (>= 32 queries) and one-at-a-time paths agree
    assert as_sets(index.search(queries[:5], 31)) == as_sets(index.search(queries, 31))[:5]


def test_threshold_is_inclusive(rng: np.random.Generator) -> None:
    hashes = uniform_hashes(rng, 20_000)
    ids = np.arange(20_000, dtype=np.int64)
    index = built(ids, hashes)
    at_31 = flip(rng, hashes[:1], np.array([31]))
    at_32 = flip(rng, hashes[1:2], np.array([32]))
    hits = index.search(np.concatenate([at_31, at_32]), 31)
    assert (0, 31) in as_sets(hits)[0]
    assert 1 not in hits.of(1)[0]
    assert (1, 32) in as_sets(index.search(at_32, 32))[0]


def test_add_remove_replace_take_effect_at_once(rng: np.random.Generator) -> None:
    hashes = uniform_hashes(rng, 30_000)
    ids = np.arange(30_000, dtype=np.int64) * 3
    index = built(ids, hashes, merge_threshold=10**9)
    new = uniform_hashes(rng, 100)
    new_ids = np.arange(100, dtype=np.int64) * 3 + 1
    index.add(new_ids, new)
    assert len(index) == 30_100
    assert as_sets(index.search(new, 0)) == [{(int(i), 0)} for i in new_ids]
    index.remove(np.array([new_ids[0], ids[0], 999_999_999]))  # delta, base, unknown
    assert len(index) == 30_098
    hits = index.search(np.concatenate([new[:1], hashes[:1]]), 31)
    assert len(hits.ids) == 0
    index.add(ids[1:2], new[50:51])  # replace a base id with another hash
    assert ids[1] not in index.search(hashes[1:2], 31).of(0)[0]
    assert (int(ids[1]), 0) in as_sets(index.search(new[50:51], 0))[0]
    assert len(index) == 30_098
    all_ids = np.concatenate([ids[2:], new_ids[1:], ids[1:2]])
    all_hashes = np.concatenate([hashes[2:], new[1:], new[50:51]])
    assert_exact(index, all_ids, all_hashes, flip(rng, all_hashes[::500], np.full(61, 20)), 31)


def test_background_merges_stay_exact(rng: np.random.Generator) -> None:
    index = MultiIndexHammingIndex(PDQ, merge_threshold=500)
    hashes = uniform_hashes(rng, 6_000)
    ids = np.arange(6_000, dtype=np.int64)
    live: dict[int, np.ndarray] = {}
    for lo in range(0, 6_000, 400):
        index.add(ids[lo : lo + 400], hashes[lo : lo + 400])
        live.update(zip(ids[lo : lo + 400].tolist(), hashes[lo : lo + 400], strict=True))
        gone = ids[lo : lo + 400 : 7]
        index.remove(gone)  # often while a merge of these very rows runs
        for i in gone.tolist():
            live.pop(i)
    index.wait_for_merge()
    assert index.last_merge_seconds is not None
    assert len(index) == len(live)
    live_ids = np.array(list(live), dtype=np.int64)
    live_hashes = np.stack(list(live.values()))
    queries = flip(rng, hashes[::50], rng.integers(0, 40, size=120))
    assert_exact(index, live_ids, live_hashes, queries, 31)
    index.compact()
    assert_exact(index, live_ids, live_hashes, queries, 31)


def test_save_load_round_trip(rng: np.random.Generator, tmp_path: Path) -> None:
    hashes = uniform_hashes(rng, 20_000)
    ids = np.arange(20_000, dtype=np.int64) + 2**39
    index = built(ids, hashes)
    index.remove(ids[:10])
    index.add(np.array([7], dtype=np.int64), hashes[:1])  # stays in the delta
    index.save(tmp_path / "pdq.index")
    loaded = MultiIndexHammingIndex(PDQ)
    loaded.load(tmp_path / "pdq.index")
    assert len(loaded) == len(index) == 19_991
    queries = flip(rng, hashes[::400], rng.integers(0, 40, size=50))
    assert as_sets(loaded.search(queries, 31)) == as_sets(index.search(queries, 31))


def test_search_while_adding_in_another_thread(rng: np.random.Generator) -> None:
    hashes = uniform_hashes(rng, 20_000)
    ids = np.arange(20_000, dtype=np.int64)
    index = built(ids[:10_000], hashes[:10_000], merge_threshold=2_000)
    queries = hashes[::97]

    def writer() -> None:
        for lo in range(10_000, 20_000, 500):
            index.add(ids[lo : lo + 500], hashes[lo : lo + 500])

    thread = threading.Thread(target=writer)
    thread.start()
    while thread.is_alive():
        for i, (found, dist) in enumerate(map(index.search(queries, 31).of, range(len(queries)))):
            row = i * 97
            # Exact for what it has seen: never a wrong hit, and pre-existing rows always there.
            assert np.array_equal(dist, PDQ_distance(hashes[found], queries[i]))
            if row < 10_000:
                assert row in found
    thread.join()
    index.wait_for_merge()
    assert_exact(index, ids, hashes, queries, 31)


def PDQ_distance(hashes: np.ndarray, query: np.ndarray) -> np.ndarray:
    return np.unpackbits(hashes ^ query, axis=1).sum(axis=1)


def test_layout_follows_size_and_keeps_pigeonhole() -> None:
    assert choose_layout(10_000_000, 256, 31) == Layout(11, 23)
    for n in (100, 10_000, 1_000_000, 10_000_000):
        layout = choose_layout(n, 256, 31)
        assert layout.substrings * layout.width <= 256
        if layout.substrings:
            assert sum(r + 1 for r in layout.radii(31)) > 31


@pytest.mark.parametrize("m", [1, 5, 11, 16, 32])
@pytest.mark.parametrize("r", [0, 1, 7, 31, 40, 64])
def test_radii_keep_pigeonhole(m: int, r: int) -> None:
    radii = Layout(m, 256 // m).radii(r)
    assert len(radii) == m and min(radii) >= -1 and max(radii) <= 256 // m
    # Every substring farther than its radius means a distance above r.
    assert sum(radius + 1 for radius in radii) > r or max(radii) == 256 // m


def test_any_bit_order_is_exact(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Substrings of scattered bits still partition the hash: pigeonhole holds."""
    order = rng.permutation(256).astype(np.int16)
    monkeypatch.setattr(mih, "choose_bit_order", lambda hashes, layout: order)
    hashes = skewed_hashes(rng, 30_000)
    ids = np.arange(30_000, dtype=np.int64)
    index = built(ids, hashes)
    assert np.array_equal(index._base.bit_order, order)
    queries = flip(rng, hashes[::300], rng.integers(0, 40, size=100))
    assert_exact(index, ids, hashes, queries, 31)  # batched
    assert_exact(index, ids, hashes, queries[:5], 31)  # one query at a time


def test_bit_order_separates_correlated_bits(rng: np.random.Generator) -> None:
    """Bits 2k and 2k+1 are copies: no substring should hold both of a pair."""
    half = np.unpackbits(uniform_hashes(rng, 5_000)[:, :16], axis=1)
    bits = np.repeat(half, 2, axis=1)
    hashes = np.packbits(bits, axis=1, bitorder="little").view("<u8")
    layout = Layout(11, 23)
    order = mih.choose_bit_order(hashes, layout)
    assert sorted(order.tolist()) == list(range(256))
    for t in range(layout.substrings):
        pairs = order[t * 23 : (t + 1) * 23] // 2
        assert len(set(pairs.tolist())) == 23


def test_small_batches_give_the_same_hits(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashes = uniform_hashes(rng, 20_000)
    ids = np.arange(20_000, dtype=np.int64)
    index = built(ids, hashes)
    queries = flip(rng, hashes[::50], rng.integers(0, 40, size=400))
    whole = as_sets(index.search(queries, 31))
    monkeypatch.setattr(mih, "_BATCH_CANDIDATES", 1)  # batches of the minimum size
    assert as_sets(index.search(queries, 31)) == whole


def test_old_snapshot_is_rejected(rng: np.random.Generator, tmp_path: Path) -> None:
    hashes = uniform_hashes(rng, 2_000)
    index = built(np.arange(2_000, dtype=np.int64), hashes)
    index.save(tmp_path / "pdq.index")
    with np.load(tmp_path / "pdq.index") as snap:
        arrays = {k: snap[k] for k in snap.files if k != "bit_order"}
    arrays["meta"][0] = 1
    with open(tmp_path / "old.index", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError):
        MultiIndexHammingIndex(PDQ).load(tmp_path / "old.index")


def test_appended_merges_are_exact_and_cheap(rng: np.random.Generator) -> None:
    """Additions above every stored id are appended to the base's tables (same
    layout and bit order, nothing re-sorted) until the size doubles; each such
    base answers exactly like brute force, removals and re-adds included."""
    hashes = skewed_hashes(rng, 160_000)  # skewed: the bit order is not the identity
    ids = np.arange(160_000, dtype=np.int64) * 3 + 7
    index = built(ids[:100_000], hashes[:100_000], merge_threshold=5_000)
    first = index._base
    assert not np.array_equal(first.bit_order, np.arange(256))
    live = dict(zip(ids[:100_000].tolist(), hashes[:100_000], strict=True))
    appended = 0
    for lo in range(100_000, 160_000, 6_000):
        index.add(ids[lo : lo + 6_000], hashes[lo : lo + 6_000])
        live.update(zip(ids[lo : lo + 6_000].tolist(), hashes[lo : lo + 6_000], strict=True))
        gone = ids[lo - 50_000 : lo : 997]
        index.remove(gone)
        for i in gone.tolist():
            live.pop(i, None)
        index.wait_for_merge()
        base = index._base
        if base.built_n == first.built_n and len(base.ids) > first.built_n:
            appended += 1
            assert base.bit_order is first.bit_order and base.layout == first.layout
    assert appended >= 5
    queries = np.concatenate([flip(rng, hashes[::1_000], rng.integers(0, 40, size=160)),
                              uniform_hashes(rng, 40)])
    live_ids = np.array(list(live), dtype=np.int64)
    live_hashes = np.stack(list(live.values()))
    assert len(index) == len(live)
    assert_exact(index, live_ids, live_hashes, queries, 31)
    # A re-added id (not above the others) forces a full build, still exact.
    again = ids[100_003]
    index.add(np.array([again]), hashes[:1])
    live[int(again)] = hashes[0]
    index.compact()
    assert index._base.built_n == len(index._base.ids)
    assert_exact(index, np.array(list(live), dtype=np.int64), np.stack(list(live.values())),
                 queries, 31)
