"""Abuse limits: a request budget per key (token buckets, per role), and a short
lockout for a client address that keeps sending wrong keys.

Both are in memory, per process: each replica limits on its own, so N replicas
behind a balancer admit up to N times a key's budget. That is enough for what they
are for (a runaway or leaked key cannot take a replica, and guessing keys, or
making the store look up junk keys, is slow), and needs no shared state.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from hashdb.errors import TooManyRequests, Unauthorized
from hashdb.models import Caller, Role

if TYPE_CHECKING:
    from hashdb.members import Members
    from hashdb.settings import Settings

Clock = Callable[[], float]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Past these, the least recently seen entries are forgotten (a forgotten bucket is a
# full one, a forgotten client has a clean record): memory stays bounded whatever
# the number of keys or addresses.
MAX_BUCKETS = 100_000
MAX_CLIENTS = 100_000


class RoleLimit(BaseModel):
    """A key's budget: `per_second` units refill its bucket, which holds `burst`.
    A unit is a request; a request that carries many queries or items (a batch) may
    be charged one unit for each (`KeyBudgets.charge`). `per_second` 0 means
    unlimited."""

    model_config = ConfigDict(frozen=True)

    per_second: float = Field(ge=0)
    burst: int = Field(ge=1)

    @property
    def unlimited(self) -> bool:
        return self.per_second == 0

    def generosity(self) -> tuple[float, int]:
        return (math.inf if self.unlimited else self.per_second, self.burst)


# Matching is what members run their platforms on: its budget is above what a
# replica can serve (~1,100 lookups/s single, ~10,000/s batched on two cores), so
# that a platform matching every upload at its peak never meets it; it stops a
# runaway client from taking a replica from everyone else only once the operator
# lowers it. Writes and administration are people and pipelines: moderate.
DEFAULT_RATE_LIMITS: dict[Role, RoleLimit] = {
    Role.MATCHER: RoleLimit(per_second=20_000, burst=200_000),
    Role.CONTRIBUTOR: RoleLimit(per_second=1_000, burst=20_000),
    Role.ADMIN: RoleLimit(per_second=500, burst=20_000),
    Role.AUDITOR: RoleLimit(per_second=50, burst=500),
}


def limit_of(roles: Iterable[Role], limits: Mapping[Role, RoleLimit]) -> RoleLimit:
    """A key's budget: that of its most generous role (a key that matches and
    contributes gets the matcher's)."""
    return max((limits[r] for r in roles), key=RoleLimit.generosity)


def _wait(seconds: float) -> int:
    # Retry-After is whole seconds; rounding down would invite a retry that fails.
    return max(1, math.ceil(seconds))


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    # When it would be full again if left alone: from then on, the same as no bucket.
    full_at: float


class KeyBudgets:
    """Token buckets by key id. A request is admitted while its key's bucket holds a
    whole token; its cost is then taken, and may overdraw the bucket (a batch worth
    more than the burst is served, and the key waits until the debt is refilled).
    That also lets a cost known only after the body is read be charged later."""

    def __init__(self, limits: Mapping[Role, RoleLimit], clock: Clock = time.monotonic,
                 max_buckets: int = MAX_BUCKETS) -> None:
        self.limits = {**DEFAULT_RATE_LIMITS, **limits}
        self._clock = clock
        self._max = max_buckets
        self._lock = threading.Lock()
        self._by_roles: dict[frozenset[Role], RoleLimit] = {}
        # Least recently used first.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def admit(self, caller: Caller, cost: int = 1) -> None:
        """Take `cost` units from the caller's budget, or refuse (TooManyRequests,
        with the wait in details["retry_after"]) if its bucket is empty."""
        limit = self._limit_of(caller.roles)
        if limit.unlimited:
            return
        with self._lock:
            self._take(caller.key_id, limit, cost, refuse=True)

    def charge(self, caller: Caller, cost: int) -> None:
        """Take `cost` more units for a request already admitted (the queries of a
        batch past the first); never refuses."""
        limit = self._limit_of(caller.roles)
        if limit.unlimited or cost <= 0:
            return
        with self._lock:
            self._take(caller.key_id, limit, cost, refuse=False)

    def _limit_of(self, roles: frozenset[Role]) -> RoleLimit:
        # On every request: remembered per set of roles (there are at most 15).
        limit = self._by_roles.get(roles)
        if limit is None:
            limit = self._by_roles[roles] = limit_of(roles, self.limits)
        return limit

    def _take(self, key_id: str, limit: RoleLimit, cost: int, refuse: bool) -> None:
        now = self._clock()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            self._forget_idle(now)
            bucket = self._buckets[key_id] = _Bucket(float(limit.burst), now, now)
        else:
            self._buckets.move_to_end(key_id)
            bucket.tokens = min(float(limit.burst),
                                bucket.tokens + (now - bucket.at) * limit.per_second)
            bucket.at = now
        if refuse and bucket.tokens < 1:
            wait = _wait((1 - bucket.tokens) / limit.per_second)
            raise TooManyRequests(
                f"this key is over its rate limit ({limit.per_second:g} a second, "
                f"bursts of {limit.burst}): retry in {wait} s",
                retry_after=wait, reason="rate_limit", per_second=limit.per_second,
                burst=limit.burst)
        bucket.tokens -= cost
        bucket.full_at = now + (limit.burst - bucket.tokens) / limit.per_second

    def _forget_idle(self, now: float) -> None:
        # Least recently used first: a bucket goes once it is full again, or whatever
        # it holds past the cap. Done as buckets are made, so it needs no sweeper.
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if oldest.full_at > now and len(self._buckets) < self._max:
                break
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


def client_group(address: str | None) -> str:
    """The unit a lockout applies to: an IPv4 address, or an IPv6 /64 (one machine
    commonly holds a whole /64, and would otherwise change address at each guess)."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted_proxies: Iterable[Network]
) -> str | None:
    """Who is calling: the connection's peer, unless the peer is one of our trusted
    proxies; then the last address in X-Forwarded-For that is not one (each proxy
    appends the address it heard from, and only our own proxies' entries can be
    believed: the client writes whatever it likes on the left)."""
    trusted = list(trusted_proxies)

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in trusted)

    if peer is None or not trusted or not is_trusted(peer):
        return peer
    hops = [h.strip() for h in (forwarded_for or "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop):
            return hop
    return hops[0] if hops else peer


@dataclass(slots=True)
class _Record:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    seen: float = 0.0


class WrongKeys:
    """Locks a client out for `seconds` once it has sent `failures` wrong keys within
    `seconds`. While locked out every key from it is refused, the right ones too:
    otherwise guessing would go on at full speed and a right guess still be let in."""

    def __init__(self, failures: int, seconds: float, clock: Clock = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.failures = failures
        self.seconds = seconds
        self._clock = clock
        self._max = max_clients
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, _Record] = OrderedDict()

    def check(self, client: str | None) -> None:
        """Refuse (TooManyRequests) a client that is locked out."""
        if self.failures == 0 or not self._clients:  # no wrong key lately: the usual case
            return
        now = self._clock()
        with self._lock:
            record = self._clients.get(client_group(client))
            if record is None or record.locked_until <= now:
                return
            wait = _wait(record.locked_until - now)
        raise TooManyRequests(
            f"too many wrong API keys from this address: every key from it is refused "
            f"for {wait} s", retry_after=wait, reason="key_lockout")

    def failed(self, client: str | None) -> None:
        """Count a wrong key from this client."""
        if self.failures == 0:
            return
        now = self._clock()
        group = client_group(client)
        with self._lock:
            record = self._clients.get(group)
            if record is None:
                record = self._clients[group] = _Record()
            self._clients.move_to_end(group)
            record.seen = now
            record.failures.append(now)
            while record.failures and record.failures[0] <= now - self.seconds:
                record.failures.popleft()
            if len(record.failures) >= self.failures:
                record.locked_until = now + self.seconds
                record.failures.clear()
            self._forget(now)

    def _forget(self, now: float) -> None:
        # Least recently failed first: gone once nothing about it counts any more.
        while self._clients:
            oldest = next(iter(self._clients.values()))
            quiet = oldest.seen <= now - self.seconds and oldest.locked_until <= now
            if not quiet and len(self._clients) <= self._max:
                break
            self._clients.popitem(last=False)

    def __len__(self) -> int:
        return len(self._clients)


class Admission:
    """Who is let in: the lockout for wrong keys, the key check, then the key's
    budget. Every authenticated HTTP request passes here once."""

    def __init__(self, budgets: KeyBudgets, wrong_keys: WrongKeys,
                 trusted_proxies: Iterable[Network] = ()) -> None:
        self.budgets = budgets
        self.wrong_keys = wrong_keys
        self.trusted_proxies = tuple(trusted_proxies)
        # reason -> requests refused, for /metrics.
        self._rejections: Counter[str] = Counter()
        self._count_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = time.monotonic) -> Admission:
        return cls(KeyBudgets(settings.rate_limits, clock),
                   WrongKeys(settings.key_lockout_failures, settings.key_lockout_seconds, clock),
                   settings.trusted_proxies)

    def client(self, peer: str | None, forwarded_for: str | None) -> str | None:
        return client_address(peer, forwarded_for, self.trusted_proxies)

    def authenticate(self, members: Members, key: str | None, client: str | None) -> Caller:
        """The caller a key belongs to, admitted. A missing key is not a wrong one (a
        browser opening the report page has none yet) and does not count."""
        try:
            self.wrong_keys.check(client)
        except TooManyRequests:
            self.rejected("key_lockout")
            raise
        try:
            caller = members.authenticate(key)
        except Unauthorized:
            if key:
                self.wrong_keys.failed(client)
            raise
        try:
            self.budgets.admit(caller)
        except TooManyRequests:
            self.rejected("rate_limit")
            raise
        return caller

    def charge(self, caller: Caller, cost: int) -> None:
        """Charge an admitted request's extra units (a batch's queries past the first)."""
        self.budgets.charge(caller, cost)

    def rejected(self, reason: str) -> None:
        with self._count_lock:
            self._rejections[reason] += 1

    def rejection_counts(self) -> dict[str, int]:
        with self._count_lock:
            return dict(self._rejections)
