"""Bearer API keys, compared in constant time."""

from __future__ import annotations

import hmac


class ApiKeys:
    """Accepts ``Authorization: Bearer <key>`` for any configured key; open when none is configured."""

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        self._keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def allows(self, authorization: str | None, raw: bool = False) -> bool:
        """``raw``: also accept the bare key without ``Bearer`` (Runpod's docs send both forms)."""
        if not self._keys:
            return True
        if not authorization:
            return False
        if authorization[:7].lower() == "bearer ":
            authorization = authorization[7:]
        elif not raw:
            return False
        given = authorization.strip().encode("utf-8", "surrogateescape")
        ok = False
        for key in self._keys:  # check every key, so timing does not tell which one (or how many) matched
            ok |= hmac.compare_digest(given, key)
        return ok
