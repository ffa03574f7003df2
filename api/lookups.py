"""Where a lookup of signals runs: on the event loop when it is light, in a thread
otherwise (`Matcher.is_light` says which). Shared by /v1/match and HMA's lookups."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.concurrency import run_in_threadpool

from hashdb.matching import MatchOptions, MatchResult
from hashdb.models import Caller
from hashdb.service import Service
from hashdb.signals import Signal


async def match_signals(
    service: Service, caller: Caller, signals: Sequence[Signal], options: MatchOptions
) -> MatchResult:
    """The signals matched. A lookup or two at the default threshold costs less than
    handing it to a thread (and GIL hand-offs with dozens of threads cost tail
    latency): it is searched here, and goes to a thread only for the database, when
    something matched."""
    matcher = service.matcher
    if not matcher.is_light(signals, options):
        return await run_in_threadpool(matcher.match, caller, signals, options)
    found = matcher.search(caller, signals, options)
    if not found.any:
        return matcher.resolve(caller, found)
    return await run_in_threadpool(matcher.resolve, caller, found)
