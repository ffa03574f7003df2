"""The memory that decoding uploads may hold at once, process-wide.

A small file can claim a large picture: a 37-byte GIF whose screen is 7000x7000,
a 97 KB 16-bit PNG of 7071x7071 (780 MB to decode before the decode path was
bounded). Each upload's cost is estimated from its header before any pixel is
decoded (`MediaFile.decode_cost`) and admitted against this budget:

- a cost above the whole budget is refused at once (413 `media_too_large`);
- one that fits waits its turn, first come first served, at most `wait_seconds`,
  then is refused with 429 and `retry_after` (the API sends Retry-After).

Admission comes before a CPU worker (`hashdb.hashing.hash_media`): an upload
waiting for memory holds no worker, and the wait for memory is the one bounded.

When a large decode ends its memory is handed back to the operating system
(`return_large_blocks`, `release_free_memory`): glibc keeps freed heap for reuse,
so a burst of large uploads would otherwise leave the process gigabytes larger
than it needs to be.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hashdb.errors import MediaTooLarge, TooManyRequests

MIB = 2**20
# Decodes at least this large hand their freed memory back when they end; smaller
# ones are not worth a walk over the heap.
TRIM_FROM_BYTES = 16 * MIB


class DecodeBudget:
    """Admits decodes whose estimated costs, summed, stay within `total_bytes`.
    Thread-safe; callers are admitted in the order they asked."""

    def __init__(self, total_bytes: int, wait_seconds: float) -> None:
        return_large_blocks()
        self.total_bytes = total_bytes
        self.wait_seconds = wait_seconds
        self._in_use = 0
        self._queue: deque[object] = deque()
        self._changed = threading.Condition()

    @property
    def in_use(self) -> int:
        """Bytes reserved by decodes running now."""
        return self._in_use

    @contextmanager
    def reserve(self, cost: int) -> Iterator[None]:
        """Hold `cost` bytes of the budget for the duration of the block; raises
        MediaTooLarge or TooManyRequests (see the module) instead of waiting longer."""
        if cost <= 0:
            yield
            return
        if cost > self.total_bytes:
            raise MediaTooLarge(
                f"decoding this file would take about {_mib(cost)} MiB of memory, more "
                f"than the server allows for all decoding at once ({_mib(self.total_bytes)} "
                "MiB, decode_memory_bytes)",
                decode_bytes=cost, decode_memory_bytes=self.total_bytes,
            )
        self._admit(cost)
        try:
            yield
        except BaseException as exc:
            # What the failed decode allocated is still referenced by the frames of
            # its traceback: let it go before the memory is counted as free.
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            with self._changed:
                self._in_use -= cost
                self._changed.notify_all()
            if cost >= TRIM_FROM_BYTES:
                release_free_memory()

    def _admit(self, cost: int) -> None:
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            try:
                admitted = self._changed.wait_for(
                    lambda: self._queue[0] is ticket and self._in_use + cost <= self.total_bytes,
                    timeout=self.wait_seconds,
                )
                if not admitted:
                    raise self._busy(cost)
                self._in_use += cost
            finally:
                self._queue.remove(ticket)
                self._changed.notify_all()  # the next in line may fit now

    def _busy(self, cost: int) -> TooManyRequests:
        retry_after = max(1, math.ceil(self.wait_seconds))
        return TooManyRequests(
            f"the server is busy decoding other uploads: this file needs about {_mib(cost)} "
            f"MiB of the {_mib(self.total_bytes)} MiB it allows for decoding at once; "
            f"try again in {retry_after} s",
            retry_after=retry_after, decode_bytes=cost, decode_memory_bytes=self.total_bytes,
        )


def _mib(n: int) -> int:
    return math.ceil(n / MIB)


def _glibc(name: str) -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        call: Callable[..., int] = getattr(libc, name)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    return call


_malloc_trim = _glibc("malloc_trim")
_mallopt = _glibc("mallopt")
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# glibc gives each thread that allocates its own heap (up to 8 per core), and each
# keeps what its busiest moment needed: with the API's dozens of request threads,
# RSS crept up for as long as a soak ran (+17% over 9 minutes at 1M hashes). Two
# heaps are plenty for threads that mostly wait for the GIL (+3%, and flat).
ARENAS = 2
# Blocks this large or larger come straight from the system and go back when freed.
LARGE_BLOCK = 4 * MIB


def return_large_blocks() -> bool:
    """Have glibc map blocks of LARGE_BLOCK bytes or more on their own, and unmap them
    when freed, whatever was freed before. By default it raises that threshold to the
    size of any such block freed (up to 32 MiB), after which decoded pixels come from
    its heaps, which keep them: a burst of 50-megapixel uploads left the server
    60-140 MiB larger for good; with this, under 10 MiB. At 4 MiB hashing is as fast
    as before (at 1 MiB, a third slower). False where the C library is not glibc."""
    if _mallopt is None:
        return False
    _mallopt(_M_ARENA_MAX, ARENAS)  # see ARENAS; before the request threads allocate
    return bool(_mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK) == 1)


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the operating system (glibc's
    malloc_trim, every arena); False where the C library has no such call."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
