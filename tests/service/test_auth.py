"""API keys: file format, hashing, region scope, production refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from features.settings import Settings
from service.auth import DEV_KEYS, ApiClient, KeyRing, hash_key
from service.errors import ServiceConfigError


def _write(path: Path, entries: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps({"keys": entries}), encoding="utf-8")
    return path


def test_hash_is_sha256_hex() -> None:
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_keys_file_authenticates_by_hash_and_scopes_regions(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "keys.json",
        [
            {"name": "taebaek", "sha256": hash_key("k-taebaek-0123456789"), "regions": ["taebaek"]},
            {"name": "ops", "sha256": hash_key("k-ops-0123456789abcdef"), "regions": ["*"], "admin": True},
        ],
    )
    ring = KeyRing.load_file(path)
    client = ring.authenticate("k-taebaek-0123456789")
    assert client == ApiClient("taebaek", frozenset({"taebaek"}), False)
    assert client.may_access("taebaek") and not client.may_access("seoul")
    assert client.may_access(None)  # an unregistered student has no region to protect
    assert client.only_region == "taebaek"
    ops = ring.authenticate("k-ops-0123456789abcdef")
    assert ops is not None and ops.admin and ops.may_access("seoul") and ops.only_region is None
    assert ring.authenticate("k-taebaek-012345678") is None
    assert ring.authenticate("") is None
    assert ring.authenticate(None) is None
    # the file holds only digests: a digest presented as a key is not a key
    assert ring.authenticate(hash_key("k-taebaek-0123456789")) is None


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        ([{"name": "a", "sha256": "XYZ", "regions": ["seoul"]}], "keys.0.sha256"),
        ([{"name": "a", "sha256": "0" * 64, "regions": ["Seoul!"]}], "keys.0.regions.0"),
        ([{"name": "a", "sha256": "0" * 64, "regions": []}], "keys.0.regions"),
        ([{"name": "a", "sha256": "0" * 64, "regions": ["seoul"], "plain": "k"}], "keys.0.plain"),
        ([], "'keys'"),
    ],
)
def test_bad_keys_file_names_the_entry(
    tmp_path: Path, entries: list[dict[str, object]], fragment: str
) -> None:
    path = _write(tmp_path / "keys.json", entries)
    with pytest.raises(ServiceConfigError, match=str(path)) as err:
        KeyRing.load_file(path)
    assert fragment in str(err.value)


def test_duplicate_names_and_missing_file(tmp_path: Path) -> None:
    entry = {"name": "a", "sha256": "0" * 64, "regions": ["seoul"]}
    with pytest.raises(ServiceConfigError, match="unique"):
        KeyRing.load_file(_write(tmp_path / "k.json", [entry, entry]))
    with pytest.raises(ServiceConfigError, match="does not exist"):
        KeyRing.load_file(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ServiceConfigError, match="not readable JSON"):
        KeyRing.load_file(tmp_path / "bad.json")


def test_dev_keys_in_development_only(tmp_path: Path) -> None:
    ring = KeyRing.from_settings(Settings(data_dir=tmp_path))
    assert ring.source == "development keys"
    for key, (name, _, admin) in DEV_KEYS.items():
        client = ring.authenticate(key)
        assert client is not None and client.name == name and client.admin == admin
    with pytest.raises(ServiceConfigError, match="production"):
        KeyRing.from_settings(Settings(data_dir=tmp_path, env="production"))


def test_production_refuses_weak_admin_key_and_accepts_a_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "keys.json", [{"name": "p", "sha256": hash_key("p" * 40), "regions": ["seoul"]}])
    base = {"data_dir": tmp_path, "env": "production"}
    with pytest.raises(ServiceConfigError, match="admin_key"):
        KeyRing.from_settings(
            Settings(**base, service={"api_keys_file": path, "admin_key": SecretStr("dev-admin-key")})
        )
    ring = KeyRing.from_settings(Settings(**base, service={"api_keys_file": path, "admin_key": "a" * 32}))
    admin = ring.authenticate("a" * 32)
    assert admin is not None and admin.admin
    assert ring.authenticate("dev-portal-key") is None
