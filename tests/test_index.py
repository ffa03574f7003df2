"""Every index against the brute-force oracle, including hashes at exactly the threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import as_sets
from hashdb.index import ExactIndex, FlatHammingIndex, brute_force_search
from hashdb.signals import SIGNAL_TYPES

PDQ = SIGNAL_TYPES["pdq"]


def flip_bits(h: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    bits = np.unpackbits(h.copy())
    where = rng.choice(bits.size, size=n, replace=False)
    bits[where] ^= 1
    return np.packbits(bits)


@pytest.fixture
def planted() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random hashes plus, for each query, stored hashes at exactly 0, 30, 31, 32, 33 bits."""
    rng = np.random.default_rng(20261128)
    stored = rng.integers(0, 256, (5000, 32), dtype=np.uint8)
    queries = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    near = [flip_bits(q, d, rng) for q in queries for d in (0, 30, 31, 32, 33)]
    hashes = np.vstack([stored, np.array(near)])
    ids = rng.permutation(len(hashes)).astype(np.int64) * 3 + 7  # sparse, shuffled ids
    return ids, hashes, queries


@pytest.mark.parametrize("radius", [0, 31, 32, 64])
def test_flat_index_agrees_with_the_oracle(planted: tuple, radius: int) -> None:
    ids, hashes, queries = planted
    index = FlatHammingIndex(PDQ)
    index.add(ids, hashes)
    got = as_sets(index.search(queries, radius))
    assert got == as_sets(brute_force_search(ids, hashes, queries, radius))
    if radius == 31:
        for hits in got:
            dists = sorted(d for _, d in hits)
            assert dists[:3] == [0, 30, 31]  # 31 is inside: the threshold is inclusive
            assert 32 not in dists


def test_removed_ids_are_never_found_and_re_adding_replaces(planted: tuple) -> None:
    ids, hashes, queries = planted
    index = FlatHammingIndex(PDQ)
    index.add(ids, hashes)
    first = index.search(queries[:1], 31)
    found, _ = first.of(0)
    index.remove(found)
    assert len(index.search(queries[:1], 31).of(0)[0]) == 0
    assert len(index) == len(ids) - len(found)
    index.remove(found)  # removing again is a no-op
    index.add(found[:1], np.repeat(queries[:1], 1, axis=0))
    index.add(found[:1], np.repeat(queries[:1], 1, axis=0))
    again_ids, again_d = index.search(queries[:1], 0).of(0)
    assert again_ids.tolist() == [found[0]] and again_d.tolist() == [0]


def test_flat_index_survives_save_and_load(planted: tuple, tmp_path: Path) -> None:
    ids, hashes, queries = planted
    index = FlatHammingIndex(PDQ)
    index.add(ids, hashes)
    index.save(tmp_path / "pdq.index")
    loaded = FlatHammingIndex(PDQ)
    loaded.load(tmp_path / "pdq.index")
    assert len(loaded) == len(index)
    assert as_sets(loaded.search(queries, 31)) == as_sets(index.search(queries, 31))


def test_exact_index_matches_only_equal_values(tmp_path: Path) -> None:
    md5 = SIGNAL_TYPES["md5"]
    rng = np.random.default_rng(5)
    hashes = rng.integers(0, 256, (100, 16), dtype=np.uint8)
    index = ExactIndex(md5)
    index.add(np.arange(100, dtype=np.int64), hashes)
    index.add(np.array([1000], dtype=np.int64), hashes[:1])  # same value, second id
    near = hashes[:1].copy()
    near[0, 0] ^= 1
    hits = index.search(np.vstack([hashes[:2], near]), 0)
    assert sorted(hits.of(0)[0].tolist()) == [0, 1000]
    assert hits.of(1)[0].tolist() == [1]
    assert hits.of(2)[0].tolist() == []
    index.remove(np.array([0]))
    assert index.search(hashes[:1], 0).of(0)[0].tolist() == [1000]
    index.save(tmp_path / "md5.index")
    loaded = ExactIndex(md5)
    loaded.load(tmp_path / "md5.index")
    assert len(loaded) == len(index) == 100


def test_every_default_index_agrees_with_the_oracle(planted: tuple) -> None:
    """The indexes the service actually uses (multi-index hashing for Hamming types)."""
    from hashdb.index import index_for

    ids, hashes, queries = planted
    index = index_for(PDQ)
    index.add(ids[:3000], hashes[:3000])
    index.add(ids[3000:], hashes[3000:])  # a second write lands in the mutable part
    index.compact()
    for radius in (0, 31, 32):
        got = as_sets(index.search(queries, radius))
        assert got == as_sets(brute_force_search(ids, hashes, queries, radius))
    index.remove(ids[::2])
    keep = np.ones(len(ids), bool)
    keep[::2] = False
    got = as_sets(index.search(queries, 31))
    assert got == as_sets(brute_force_search(ids[keep], hashes[keep], queries, 31))
