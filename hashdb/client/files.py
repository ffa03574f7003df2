"""Many files on every core: folders walked in a stable order, each file handled
in a pool of processes, the answers given back in input order.

Memory stays bounded whatever the number of files: paths are read from the walk
as the pool needs them and at most `window` chunks are in flight, so a folder of
millions streams through. Workers read the files themselves (bytes never cross a
pipe) and send back small results: a line of JSON, or hashes."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hashdb.client.http import ClientError
from hashdb.client.local import HashedMedia, TypeNames, hash_media

if TYPE_CHECKING:
    from ingest.media import MediaLimits

# Paths per task: a 1024x768 JPEG hashes (PDQ) in ~3-4 ms, and handing a task over
# costs the parent ~0.3 ms of CPU; 8 a task make that negligible (0.12 s for 2,048
# files, against 0.7 s one a task) and keep the load even.
CHUNK = 8
# Tasks queued per worker: enough to keep every core busy while the parent writes
# answers or waits on the network, few enough to bound memory.
TASKS_PER_WORKER = 4


def cores() -> int:
    """The cores this process may run on (a container's or `taskset`'s share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def walk(paths: Iterable[str | Path]) -> Iterator[str]:
    """The files named, and every file under the folders named (recursively,
    entries sorted by name, symbolic links to folders not followed), in that order.
    A path that does not exist is yielded as it is: reading it reports the error."""
    for path in paths:
        text = str(path)
        if os.path.isdir(text):
            yield from _walk_folder(text)
        else:
            yield text


def _walk_folder(folder: str) -> Iterator[str]:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        yield folder  # unreadable: its error is reported like a file's
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_folder(entry.path)
        elif entry.is_file():
            yield entry.path


def pin_hashing_threads() -> None:
    """One native thread for the hashing libraries (BLAS, OpenCV) in this process:
    a pool of workers, or the server's request threads, is the parallelism, and
    their own thread pools would fight each other for the cores."""
    import cv2
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    cv2.setNumThreads(1)


def _run_chunk[T](work: Callable[[str], T], paths: list[str]) -> list[T]:
    return [work(p) for p in paths]


def _context() -> multiprocessing.context.BaseContext:
    """Forked workers start at once with the modules already imported; a process
    running threads forks unsafely (a lock held by another thread stays held in
    the child), so it gets a fork server instead, which preloads the hashing code."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["hashdb.hashing", "hashdb.client.files"])
        return ctx
    return multiprocessing.get_context("spawn")


def map_files[T](
    work: Callable[[str], T], paths: Iterable[str], jobs: int | None = None,
    chunk: int = CHUNK, ahead: int = 0,
) -> Iterator[T]:
    """`work(path)` for each path on `jobs` processes (default: every core),
    yielded in the order of `paths`, with at most `jobs * TASKS_PER_WORKER` chunks
    of `chunk` paths (or `ahead` paths, if more) handed out ahead of the one being
    read. `work` must be a module-level function (or a `functools.partial` of one)
    that reports a bad file in its result rather than raising: an exception stops
    the whole run."""
    jobs = jobs or cores()
    window = max(jobs * TASKS_PER_WORKER, -(-ahead // chunk))
    if jobs <= 1:
        yield from map(work, paths)
        return
    import hashdb.hashing  # noqa: F401  (imported once here, inherited by forked workers)

    pending: deque[Future[list[T]]] = deque()
    source = iter(paths)
    with ProcessPoolExecutor(jobs, mp_context=_context(), initializer=pin_hashing_threads) as pool:
        try:
            while True:
                while len(pending) < window:
                    batch = list(islice(source, chunk))
                    if not batch:
                        break
                    pending.append(pool.submit(_run_chunk, work, batch))
                if not pending:
                    return
                yield from pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


# What the workers do ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FileError:
    """A file that could not be hashed (or matched): `{"path", "error": {"code",
    "message"}}` in a JSON Lines output."""

    path: str
    code: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "error": {"code": self.code, "message": self.message}}


def signals_line(path: str, types: TypeNames, limits: MediaLimits | None) -> tuple[bool, str]:
    """`hashdb hash`'s line for one file (written in the worker, in parallel):
    `{"path", "media_type", "signals"}`, or `{"path", "error"}` (then False)."""
    from hashdb.errors import HashdbError
    from hashdb.hashing import hash_media as compute
    from ingest.media import MediaLimits

    try:
        data = Path(path).read_bytes()
        media_type, signals = compute(data, _types(types), limits or MediaLimits())
        line: dict[str, Any] = {"path": path, "media_type": media_type,
                                "signals": [s.as_json() for s in signals]}
        return True, json.dumps(line)
    except (OSError, HashdbError) as exc:
        code = exc.code if isinstance(exc, HashdbError) else "unreadable"
        return False, json.dumps(FileError(path, code, str(exc)).as_json())


def query_signals(
    path: str, types: TypeNames, limits: MediaLimits | None
) -> tuple[str, HashedMedia | FileError]:
    """A file's query signals, for `hashdb match`; or why it has none."""
    try:
        return path, hash_media(path, types, limits, query=True)
    except ClientError as exc:
        return path, FileError(path, exc.code, exc.message)


def _types(names: TypeNames) -> list[Any] | None:
    from hashdb.signals import SIGNAL_TYPES

    return None if names is None else SIGNAL_TYPES.parse_names(names)
