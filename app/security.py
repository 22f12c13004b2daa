"""API keys and per-key query budgets (counted in a shared :mod:`app.state` store).

Keys are kept only as SHA-256 digests; a key is known in logs and metrics by its *key id*: its name
(``name:secret`` entries) or, for a bare secret, ``key-`` and its position among the entries (``key-1``,
``key-2``, ...). Nothing published is derived from a secret. With no keys configured the service is open
and every client shares the key id ``anonymous``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from app.errors import BudgetExhausted, Unauthorized
from app.state import Reservation, StateStore

ANONYMOUS = "anonymous"
UNAUTHENTICATED = "unauthenticated"  # the metrics label of refused failed authentications


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyRing:
    """The accepted API keys, as ``sha256(secret) -> key id``."""

    def __init__(self, entries: Iterable[str], *, require_names: str | None = None) -> None:
        """``entries``: ``name:secret`` or a bare secret each (key id ``key-<position>``). Raises ``ValueError``
        for an empty secret, a name used twice, or, when ``require_names`` (the reason) is given, a bare
        secret; the message never contains a secret."""
        self._ids: dict[str, str] = {}
        for position, entry in enumerate(entries, 1):
            name, sep, secret = (part.strip() for part in entry.partition(":"))
            if not sep:
                name, secret = "", name
                if require_names:
                    raise ValueError(f"API key entry {position} has no name: give it as 'name:secret' ({require_names})")
            digest = _digest(secret)
            key_id = name or f"key-{position}"
            if not secret:
                raise ValueError(f"API key entry {position} has an empty secret")
            if key_id in self._ids.values() or digest in self._ids:
                raise ValueError(f"API key entry {position} ({key_id}) repeats a name or a secret")
            self._ids[digest] = key_id

    @classmethod
    def from_sources(cls, keys: Iterable[str], keys_file: Path | None, *, require_names: str | None = None) -> KeyRing:
        """Keys given directly plus the lines of ``keys_file`` (blank lines and ``#`` comments skipped)."""
        entries = list(keys)
        if keys_file is not None:
            lines = keys_file.read_text().splitlines()
            entries += [line for line in (raw.strip() for raw in lines) if line and not line.startswith("#")]
        return cls(entries, require_names=require_names)

    def shares_a_secret_with(self, other: KeyRing) -> bool:
        """True when a secret of this ring is also in ``other``."""
        return not self._ids.keys().isdisjoint(other._ids.keys())

    @property
    def enabled(self) -> bool:
        """True when at least one key is configured (model routes then need one)."""
        return bool(self._ids)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._ids.values())

    def authenticate(self, headers: Mapping[str, str]) -> str:
        """The key id for ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; raises :class:`Unauthorized`."""
        if not self._ids:
            return ANONYMOUS
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        secret = credentials.strip() if scheme.lower() == "bearer" else headers.get("x-api-key", "").strip()
        if not secret:
            raise Unauthorized("missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
        key_id = self._ids.get(_digest(secret))
        if key_id is None:
            raise Unauthorized("invalid API key")
        return key_id


class Budget:
    """Each key may query ``limit`` images in total, counted in a :class:`StateStore` that every server process
    shares: a request's images are charged whole or not at all, so concurrent requests never overspend. The
    service checks before the forward pass and charges after it (a key pays for what it was answered)."""

    def __init__(self, store: StateStore, limit: int) -> None:
        self.store = store
        self.limit = limit

    def reserve(self, key_id: str, images: int) -> Reservation:
        """Count ``images`` against ``key_id``; raises :class:`app.errors.BudgetExhausted` (counting nothing) when they do not fit."""
        return self.store.reserve(key_id, images, self.limit)

    def check(self, key_id: str, images: int) -> None:
        """Raise :class:`app.errors.BudgetExhausted` when ``images`` exceed what ``key_id`` has left; counts nothing."""
        used = self.used(key_id)
        if used + images > self.limit:
            raise BudgetExhausted(used, self.limit, images)

    def used(self, key_id: str) -> int:
        return self.store.used(key_id)

    def remaining(self, key_id: str) -> int:
        return max(self.limit - self.used(key_id), 0)
