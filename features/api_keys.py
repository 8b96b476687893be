"""API keys as they are stored and handed out: the digest a key is kept under and the development keys.

The service checks keys (`service.auth.KeyRing`); the CLI makes them (`learnrec api-key`) and the serve
bench uses the development ones. Both read this module, so neither reaches into the web layer.
"""

from __future__ import annotations

import hashlib

from features.schemas import ALL_REGIONS

#: Well-known development keys (plain text on purpose: they only ever work outside production).
DEV_KEYS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    # key: (client name, regions, admin)
    "dev-portal-key": ("dev-portal", (ALL_REGIONS,), False),
    "dev-taebaek-key": ("dev-portal-taebaek", ("taebaek",), False),
    "dev-admin-key": ("dev-admin", (ALL_REGIONS,), True),
}


def hash_key(key: str) -> str:
    """The sha256 hex digest under which a key is stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
