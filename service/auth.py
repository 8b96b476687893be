"""API keys: one per client, scoped to partner regions, stored as sha256 hex digests, never logged.

The keys file (``settings.service.api_keys_file``) is JSON::

    {"keys": [
        {"name": "portal-seoul", "sha256": "<64 hex>", "regions": ["seoul"]},
        {"name": "portal-all", "sha256": "<64 hex>", "regions": ["*"]},
        {"name": "ops", "sha256": "<64 hex>", "regions": ["*"], "admin": true}
    ]}

``learnrec api-key`` prints a fresh key and its entry. In development with no file configured the
well-known ``DEV_KEYS`` are used (and a warning logged); in production that is refused.
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from features.api_keys import DEV_KEYS, hash_key
from features.schemas import ALL_REGIONS, REGION_PATTERN
from features.settings import Settings
from service.errors import ServiceConfigError

logger = logging.getLogger("learnrec.service.auth")


@dataclass(frozen=True)
class ApiClient:
    """Who is calling: a named client, the regions it may read and write, and whether it is admin."""

    name: str
    regions: frozenset[str]
    admin: bool = False

    @property
    def all_regions(self) -> bool:
        return ALL_REGIONS in self.regions

    def may_access(self, region: str | None) -> bool:
        """True when this client may read or write a student of `region` (None = region not known)."""
        if self.all_regions or region is None:
            return True
        return region in self.regions

    @property
    def only_region(self) -> str | None:
        """The single region this key is scoped to, if it is scoped to exactly one."""
        if self.all_regions or len(self.regions) != 1:
            return None
        return next(iter(self.regions))


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    regions: list[Annotated[str, StringConstraints(pattern=rf"({REGION_PATTERN})|^\*$")]] = Field(
        min_length=1
    )
    admin: bool = False


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[_KeyEntry] = Field(min_length=1)


class KeyRing:
    """The configured keys; `authenticate` maps a presented key to its client in constant work per key."""

    def __init__(self, entries: list[tuple[str, ApiClient]], source: str) -> None:
        self._entries = [(digest.encode("ascii"), client) for digest, client in entries]
        self.source = source

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def regions(self) -> frozenset[str]:
        """The regions some key is scoped to (``*`` left out)."""
        return frozenset(r for _, c in self._entries for r in c.regions if r != ALL_REGIONS)

    def authenticate(self, presented: str | None) -> ApiClient | None:
        """The client owning `presented`, or None. Every entry is compared, so timing says nothing."""
        if not presented:
            return None
        digest = hash_key(presented).encode("ascii")
        found: ApiClient | None = None
        for stored, client in self._entries:
            if hmac.compare_digest(stored, digest):
                found = client
        return found

    @classmethod
    def load_file(cls, path: Path) -> KeyRing:
        """Read a keys file; errors name the file and the bad entry."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ServiceConfigError(f"API keys file {path} does not exist") from exc
        except (OSError, ValueError) as exc:
            raise ServiceConfigError(f"API keys file {path} is not readable JSON: {exc}") from exc
        try:
            parsed = _KeysFile.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ServiceConfigError(f"API keys file {path}: '{where}': {first['msg']}") from exc
        names = [e.name for e in parsed.keys]
        if len(set(names)) != len(names):
            raise ServiceConfigError(f"API keys file {path}: key names must be unique")
        entries = [(e.sha256, ApiClient(e.name, frozenset(e.regions), e.admin)) for e in parsed.keys]
        return cls(entries, source=str(path))

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        """The keys in force: the keys file, plus `service.admin_key`; dev keys only in development."""
        production = settings.env == "production"
        admin_key = settings.service.admin_key.get_secret_value() if settings.service.admin_key else None
        if admin_key is not None and (admin_key in DEV_KEYS or len(admin_key) < 16) and production:
            raise ServiceConfigError(
                "service.admin_key is a development key or shorter than 16 characters; "
                "set LEARNREC_SERVICE__ADMIN_KEY to a long random secret in production"
            )
        if settings.service.api_keys_file is not None:
            ring = cls.load_file(settings.service.api_keys_file)
        elif production:
            raise ServiceConfigError(
                "no API keys configured: set LEARNREC_SERVICE__API_KEYS_FILE in production "
                "(the development keys are refused when env=production)"
            )
        else:
            logger.warning(
                "no API keys file configured: using the well-known development keys; "
                "never expose this service",
                extra={"dev_clients": sorted(name for name, _, _ in DEV_KEYS.values())},
            )
            ring = cls(
                [
                    (hash_key(key), ApiClient(name, frozenset(regions), admin))
                    for key, (name, regions, admin) in DEV_KEYS.items()
                ],
                source="development keys",
            )
        if admin_key is not None:
            ring._entries.append(
                (hash_key(admin_key).encode("ascii"), ApiClient("admin", frozenset({ALL_REGIONS}), True))
            )
        return ring
