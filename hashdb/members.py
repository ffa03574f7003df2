"""Members and their keys: who may call, with which roles."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any, Protocol

from hashdb.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    StoreUnavailable,
    Unauthorized,
)
from hashdb.models import ApiKey, Caller, Member, NewEvent, Role, console_event

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
KEY_PREFIX = "hdb"
# The key id of the operator at the console (the CLI), who acts without a key.
CONSOLE = "console"


class MemberStore(Protocol):
    """The part of the Store that members and keys need. Every write appends its
    event (the actor's, given) to the audit trail in the same transaction."""

    def create_member(
        self, name: str, trusted_flagger: bool, event: NewEvent | None = None
    ) -> Member: ...

    def get_member(self, name: str) -> Member | None: ...

    def list_members(self) -> list[Member]: ...

    def update_member(
        self, name: str, event: NewEvent, trusted_flagger: bool | None = None,
        active: bool | None = None,
    ) -> Member: ...

    def member_keys(self, member_id: int) -> list[ApiKey]: ...

    def create_key(
        self, member: Member, key_id: str, secret_hash: bytes, roles: frozenset[Role],
        event: NewEvent | None = None,
    ) -> ApiKey: ...

    def get_key(self, key_id: str) -> ApiKey | None: ...

    def key_by_secret_hash(self, secret_hash: bytes) -> ApiKey | None: ...

    def revoke_key(self, key_id: str, event: NewEvent | None = None) -> bool: ...

    def count_keys(self) -> int: ...


def hash_secret(key: str) -> bytes:
    # Keys carry 256 random bits, so a fast hash is enough: no dictionary to guess from.
    return hashlib.sha256(key.encode()).digest()


def actor_event(caller: Caller | None, kind: str, **details: Any) -> NewEvent:
    """An audit event whose actor is `caller` (None: the operator at the console)."""
    return caller.event(kind, **details) if caller else console_event(kind, **details)


def require_role(caller: Caller | None, role: Role) -> None:
    """Refuse a caller whose key lacks `role` (admins have every role)."""
    # None is the operator at the console (CLI), who may do anything.
    if caller is not None and not caller.has(role):
        raise Forbidden(f"this needs a key with the {role.value!r} role", role=role.value)


class Members:
    def __init__(self, store: MemberStore, key_cache_seconds: float) -> None:
        self.store = store
        self._cache_seconds = key_cache_seconds
        # Key checks are one lookup per request; a short cache keeps them off the
        # database on the hot path. Another replica sees a revocation within its TTL.
        self._keys: dict[bytes, tuple[float, Caller]] = {}

    def authenticate(self, key: str | None) -> Caller:
        if not key:
            raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
        digest = hash_secret(key)
        cached = self._keys.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            found = self.store.key_by_secret_hash(digest)
        except StoreUnavailable:
            # The database is unreachable: a key checked before keeps working (matching
            # answers from memory meanwhile); nothing can be revoked until it is back.
            if cached is not None:
                return cached[1]
            raise
        if found is None or found.revoked_at is not None:
            raise Unauthorized("this API key is not valid")
        if not found.member.active:
            raise Unauthorized("this API key's member is deactivated")
        caller = Caller(found.member, found.key_id, found.roles)
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[digest] = (time.monotonic() + self._cache_seconds, caller)
        return caller

    def acting_as(self, member_name: str, roles: Iterable[Role]) -> Caller:
        """A caller for the operator's console, acting for a named member."""
        member = self.store.get_member(member_name)
        if member is None:
            raise NotFound(f"no member {member_name!r}", member=member_name)
        return Caller(member, CONSOLE, frozenset(roles))

    def create_member(self, caller: Caller | None, name: str, trusted_flagger: bool) -> Member:
        require_role(caller, Role.ADMIN)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidRequest(
                "a member name is 1-64 letters, digits, '_', '.' or '-'", name=name[:64]
            )
        return self.store.create_member(
            name, trusted_flagger,
            actor_event(caller, "member_created", name=name, trusted_flagger=trusted_flagger))

    def list_members(self, caller: Caller) -> list[Member]:
        require_role(caller, Role.ADMIN)
        return self.store.list_members()

    def get_member(self, caller: Caller, name: str) -> tuple[Member, list[ApiKey]]:
        """A member and its keys (never their secrets)."""
        require_role(caller, Role.ADMIN)
        member = self.store.get_member(name)
        if member is None:
            raise NotFound(f"no member {name[:64]!r}", member=name[:64])
        return member, self.store.member_keys(member.id)

    def update_member(
        self, caller: Caller | None, name: str, *, trusted_flagger: bool | None = None,
        active: bool | None = None, reason: str | None = None,
    ) -> Member:
        """Grants or withdraws trusted-flagger status, deactivates or reactivates a
        member. A deactivated member's keys stop at once on this process (on the
        others within `key_cache_seconds`); its media and history stay."""
        require_role(caller, Role.ADMIN)
        if caller is not None and active is False and caller.member.name == name:
            raise Conflict("an admin cannot deactivate its own member", member=name)
        member = self.store.update_member(
            name, actor_event(caller, "member_updated", reason=reason),
            trusted_flagger=trusted_flagger, active=active)
        self._keys.clear()
        return member

    def create_key(
        self,
        caller: Caller | None,
        member_name: str,
        roles: Iterable[str],
        *,
        create_member: bool = False,
        trusted_flagger: bool = False,
    ) -> tuple[ApiKey, str]:
        """A new key for a member: (its record, the key itself, shown only now)."""
        require_role(caller, Role.ADMIN)
        try:
            role_set = frozenset(Role(r.strip()) for r in roles if r.strip())
        except ValueError:
            raise InvalidRequest(
                "unknown role", roles=list(roles), known=[r.value for r in Role]
            ) from None
        if not role_set:
            raise InvalidRequest("a key needs at least one role", known=[r.value for r in Role])
        member = self.store.get_member(member_name)
        if member is None:
            if not create_member:
                raise NotFound(f"no member {member_name[:64]!r}", member=member_name[:64])
            member = self.create_member(caller, member_name, trusted_flagger)
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        record = self.store.create_key(member, key_id, hash_secret(key), role_set,
                                       actor_event(caller, "key_created"))
        return record, key

    def revoke_key(self, caller: Caller | None, key_id: str) -> ApiKey:
        require_role(caller, Role.ADMIN)
        if not self.store.revoke_key(key_id, actor_event(caller, "key_revoked")):
            raise NotFound(f"no active key {key_id[:64]!r}", key_id=key_id[:64])
        self._keys.clear()  # revoked here: refused here at once
        record = self.store.get_key(key_id)
        assert record is not None
        return record

    def ensure_admin_key(self) -> str | None:
        """On a store with no keys at all, create an admin member and key; else None."""
        if self.store.count_keys():
            return None
        _, key = self.create_key(None, "admin", ["admin"], create_member=True)
        return key
