"""In-memory indexes of signal values, one per signal type, behind one protocol."""

from hashdb.index.base import Hits, Index, brute_force_search, index_for
from hashdb.index.exact import ExactIndex
from hashdb.index.flat import FlatHammingIndex
from hashdb.index.mih import MultiIndexHammingIndex

__all__ = [
    "ExactIndex",
    "FlatHammingIndex",
    "Hits",
    "Index",
    "MultiIndexHammingIndex",
    "brute_force_search",
    "index_for",
]
