"""The parts of `VectorIndex` (hashdb/index/vector.py): an IVF over int8 codes
(`IvfPart`), training and nprobe calibration (`trained`), the state a search
reads (`IvfState`), and the read-write lock that lets searches run together."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import numpy as np
from faiss.contrib.inspect_tools import get_invlist

log = logging.getLogger(__name__)

NORM_BAND = 0.05  # the IVF holds vectors whose norm is within 5% of the type's scale
TRAIN_PER_LIST = 16  # k-means sample: points per centroid
KMEANS_ITERATIONS = 5  # recall is the same as with 10
MAX_NLIST = 8192  # the build assigns n x nlist: ~12 min at 10M on one core
CALIBRATION_QUERIES = 2000
MIN_NPROBE = 8
CHUNK = 16_384  # vectors converted to float32 at a time
HASHTABLE, NO_MAP = faiss.DirectMap.Hashtable, faiss.DirectMap.NoMap  # type: ignore[attr-defined]


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds off new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writing and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            self._cond.wait_for(lambda: not self._writing and not self._readers)
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


def vector_norms(values: np.ndarray) -> np.ndarray:
    """Norms of int8 vectors, computed as the oracle does (exact sums, float32 sqrt)."""
    v = values.astype(np.float32)
    return np.sqrt(np.einsum("ij,ij->i", v, v))


class IvfPart:
    """One FAISS IVF of int8 vectors keyed by signal id, with bounds on the norms
    of everything added since it was built (they widen the search radius)."""

    def __init__(self, ivf: faiss.IndexIVFScalarQuantizer, lo: float, hi: float,
                 trained_size: int, expected_recall: float = 1.0) -> None:
        self.ivf, self.lo, self.hi = ivf, lo, hi
        self.trained_size, self.expected_recall = trained_size, expected_recall

    @classmethod
    def empty(cls, centroids: np.ndarray) -> IvfPart:
        nlist, dims = centroids.shape
        quantizer = faiss.IndexFlatIP(dims)
        quantizer.add(centroids)
        ivf = faiss.IndexIVFScalarQuantizer(
            quantizer, dims, nlist, faiss.ScalarQuantizer.QT_8bit_direct_signed,
            faiss.METRIC_INNER_PRODUCT, False,  # by_residual=False: codes are the values
        )
        ivf.is_trained = True  # the direct codec has nothing to learn
        ivf.set_direct_map_type(HASHTABLE)
        return cls(ivf, np.inf, 0.0, 0)

    @classmethod
    def flat(cls, dims: int) -> IvfPart:
        return cls.empty(np.zeros((1, dims), np.float32))

    @property
    def nlist(self) -> int:
        return int(self.ivf.nlist)

    def __len__(self) -> int:
        return int(self.ivf.ntotal)

    def add(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Add ids that are not present."""
        if not len(ids):
            return
        norms = vector_norms(values)
        self.lo, self.hi = min(self.lo, float(norms.min())), max(self.hi, float(norms.max()))
        if not len(self):  # each list filled in one piece: no spare capacity
            self.ivf.set_direct_map_type(NO_MAP)
            self._fill(ids, values)
            self.ivf.set_direct_map_type(HASHTABLE)
            return
        for lo in range(0, len(ids), CHUNK):
            chunk = values[lo : lo + CHUNK].astype(np.float32)
            self.ivf.add_with_ids(chunk, ids[lo : lo + CHUNK])

    def _fill(self, ids: np.ndarray, values: np.ndarray) -> None:
        lists = np.zeros(len(ids), np.int64)
        if self.nlist > 1:
            for lo in range(0, len(ids), CHUNK):
                chunk = values[lo : lo + CHUNK].astype(np.float32)
                lists[lo : lo + CHUNK] = self.ivf.quantizer.assign(chunk, 1)[:, 0]
        order = np.argsort(lists, kind="stable")
        bounds = np.searchsorted(lists[order], np.arange(self.nlist + 1))
        invlists = self.ivf.invlists
        assert invlists is not None
        for list_no in np.flatnonzero(np.diff(bounds)):
            rows = order[bounds[list_no] : bounds[list_no + 1]]
            list_ids = ids[rows]
            codes = values[rows].view(np.uint8) ^ np.uint8(0x80)  # the codec's value + 128
            invlists.add_entries(
                int(list_no), len(rows), faiss.swig_ptr(list_ids), faiss.swig_ptr(codes)
            )
        self.ivf.ntotal = len(self) + len(ids)

    def remove(self, ids: np.ndarray) -> None:
        if len(self) and len(ids):
            self.ivf.remove_ids(faiss.IDSelectorArray(ids))

    def list_content(self, list_no: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of one list's ids and int8 values."""
        ids, codes = get_invlist(self.ivf.invlists, list_no)
        return ids, (codes ^ np.uint8(0x80)).view(np.int8)

    def matches(
        self, q: np.ndarray, qnorm: np.ndarray, limit: np.float32
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, id, exact distance) of every hit within `limit` in the probed lists.

        `q` holds the int8 values as float32: the codec turns queries into int8 too
        (truncating), so only integer queries get exact inner products."""
        cos_min = 1.0 - (float(limit) + 1e-5)
        found: list[tuple[np.ndarray, np.ndarray]] = []
        # cos >= c  <=>  q . v >= c |q| |v|. FAISS takes one radius a call, so queries
        # go in groups of norms within 1% (a batch of SSCD queries is one or two).
        group = np.floor(np.log(np.maximum(qnorm, 1e-6)) / np.log(1.01))
        for g in np.unique(group):
            rows = np.flatnonzero(group == g)
            if cos_min >= 0:
                bound = cos_min * float(qnorm[rows].min()) * self.lo
            else:
                bound = cos_min * float(qnorm[rows].max()) * self.hi
            lims, _, ids = self.ivf.range_search(q[rows], bound - 1.0)  # keeps q . v > radius
            found.append((np.repeat(rows, np.diff(lims.astype(np.int64))), ids))
        rows, ids = (np.concatenate(a) for a in zip(*found, strict=True))
        dist = np.empty(len(ids), np.float32)
        for lo in range(0, len(ids), CHUNK):
            v = self.ivf.reconstruct_batch(ids[lo : lo + CHUNK])  # the exact int8 values
            r = rows[lo : lo + CHUNK]
            # The oracle's operations, in float32: exact dot products and norms.
            dots = np.einsum("ij,ij->i", v, q[r])
            norms = np.sqrt(np.einsum("ij,ij->i", v, v))
            dist[lo : lo + CHUNK] = 1.0 - dots / np.maximum(norms * qnorm[r], 1e-12)
        keep = dist <= limit
        return rows[keep], ids[keep], dist[keep]

    @property
    def nbytes(self) -> int:
        """Codes, ids and centroids (the hashtable adds ~40 bytes a vector)."""
        return len(self) * (self.ivf.code_size + 8) + self.nlist * self.ivf.d * 4


def nlist_for(n: int) -> int:
    """Lists for n vectors. Finer lists need fewer scanned for the same recall
    (at 400K, 8 sqrt(n) lists scan a third of what 4 sqrt(n) do), until the
    centroids cost as much as the lists, or the build too long."""
    return min(int(8 * np.sqrt(n)), MAX_NLIST)


def trained(ids: np.ndarray, values: np.ndarray, rng: np.random.Generator,
             nprobe: int | None, recall_target: float, cosine: float) -> IvfPart:
    """An IVF for these vectors: spherical k-means on a sample, nprobe measured."""
    n, dims = values.shape
    nlist = nlist_for(n)
    sample = values[np.sort(rng.choice(n, min(n, TRAIN_PER_LIST * nlist), replace=False))]
    kmeans = faiss.Kmeans(
        dims, nlist, niter=KMEANS_ITERATIONS, spherical=True, seed=int(rng.integers(2**31)),
        min_points_per_centroid=1, max_points_per_centroid=TRAIN_PER_LIST,
    )
    kmeans.train(unit(sample))
    del sample
    centroids = kmeans.centroids
    assert centroids is not None
    part = IvfPart.empty(centroids)
    part.add(ids, values)
    part.trained_size = n
    probe = values[rng.choice(n, min(n, CALIBRATION_QUERIES), replace=False)]
    found, need = probe_ranks(centroids, unit(probe), rng, cosine), nprobe
    if need is None:
        need = int(np.quantile(found, recall_target, method="higher")) + 1
        if need > nlist // 4:
            log.warning("vector index: recall %.3f at cosine %.2f needs nprobe %d of %d lists;"
                        " capped", recall_target, cosine, need, nlist)
        # At least MIN_NPROBE: a dense group (one image contributed many times) is
        # split among several lists, all near the query.
        need = max(min(need, nlist // 4), MIN_NPROBE)
    need = min(need, nlist)
    part.ivf.nprobe = need
    part.expected_recall = float(np.mean(found < need))
    return part


def unit(values: np.ndarray) -> np.ndarray:
    x = values.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def probe_ranks(
    centroids: np.ndarray, v: np.ndarray, rng: np.random.Generator, cosine: float
) -> np.ndarray:
    """For a query at `cosine` to each vector (towards a random orthogonal direction),
    how many lists come before the vector's own: it is found if nprobe > rank."""
    noise = rng.standard_normal(v.shape, dtype=np.float32)
    noise -= np.einsum("ij,ij->i", noise, v)[:, None] * v
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    q = cosine * v + np.sqrt(1 - cosine**2) * noise
    home = np.argmax(v @ centroids.T, axis=1)
    sim = q @ centroids.T
    return (sim > sim[np.arange(len(q)), home][:, None]).sum(axis=1)  # type: ignore[no-any-return]


class IvfState:
    """The IVF, and the exact part for vectors of unusual norm; an id is in one of them."""

    def __init__(self, main: IvfPart, odd: IvfPart, scale: float) -> None:
        self.main, self.odd, self.scale = main, odd, scale

    def __len__(self) -> int:
        return len(self.main) + len(self.odd)

    def add(self, ids: np.ndarray, values: np.ndarray) -> None:
        self.remove(ids)
        (ids, values), odd = self.split(ids, values)
        self.main.add(ids, values)
        self.odd.add(*odd)

    def split(self, ids: np.ndarray, values: np.ndarray) -> tuple[tuple[np.ndarray, ...], ...]:
        """(ids, values) of usual norm, and the others (no copy when all are usual)."""
        usual = np.abs(vector_norms(values) / self.scale - 1.0) <= NORM_BAND
        if usual.all():
            return (ids, values), (ids[:0], values[:0])
        return (ids[usual], values[usual]), (ids[~usual], values[~usual])

    def remove(self, ids: np.ndarray) -> None:
        self.main.remove(ids)
        self.odd.remove(ids)


def dedup(ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Within one call the last value of a repeated id wins."""
    _, last = np.unique(ids[::-1], return_index=True)
    if len(last) == len(ids):
        return ids, values
    keep = np.sort(len(ids) - 1 - last)
    return ids[keep], values[keep]
