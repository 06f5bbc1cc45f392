"""Tests of the keyring: its file, its permissions, rotation, retirement and ATOMIC_KEY."""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import pytest

from atomic_usage.config import Settings
from atomic_usage.errors import ConfigError, KeyringError, UnknownKeyError
from atomic_usage.security import Keyring, key_id_for, load_or_create_keyring
from atomic_usage.security import keyring as keyring_mod


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _rewrite(path: Path, doc: Any) -> None:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    path.chmod(0o600)


class TestCreate:
    """Keyring.create writes a new 0600 file with one key, atomically."""

    def test_file_is_private_and_documented(self, tmp_path: Path) -> None:
        """The file is mode 0600 in a 0700 folder and holds the documented fields."""
        path = tmp_path / "new" / "keyring.json"
        ring = Keyring.create(path)
        assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
        doc = _doc(path)
        assert doc["format"] == "atomic-usage-keyring" and doc["version"] == 1
        assert doc["active"] == ring.active_id == doc["keys"][0]["id"]
        assert key_id_for(base64.b64decode(doc["keys"][0]["key"])) == ring.active_id
        assert ring.path == path and len(ring) == 1

    def test_file_is_0600_from_its_creation(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The key bytes go to a file opened O_EXCL with mode 0600, never chmod-ed afterwards."""
        calls: list[tuple[str, int, int]] = []
        real_open = os.open

        def spy(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
            calls.append((str(path), flags, mode))
            return real_open(path, flags, mode, **kw)

        monkeypatch.setattr(os, "open", spy)
        monkeypatch.setattr(os, "chmod", lambda *a, **k: pytest.fail("chmod called"))
        Keyring.create(tmp_path / "keyring.json")
        tmp_calls = [c for c in calls if c[0].endswith(".tmp")]
        assert tmp_calls and all(c[1] & os.O_EXCL and c[2] == 0o600 for c in tmp_calls)

    def test_refuses_to_overwrite(self, ring_file: Path) -> None:
        """Creating over an existing keyring is refused, and the file is unchanged."""
        before = ring_file.read_bytes()
        with pytest.raises(KeyringError, match="exists already"):
            Keyring.create(ring_file)
        assert ring_file.read_bytes() == before

    def test_folder_cannot_be_made(self, tmp_path: Path) -> None:
        """A parent that is a file gives a clear KeyringError."""
        (tmp_path / "afile").write_text("")
        with pytest.raises(KeyringError, match="Cannot create the folder"):
            Keyring.create(tmp_path / "afile" / "keyring.json")

    def test_failed_write_leaves_no_temporary_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A failing rename (disk full) raises KeyringError and removes the temporary file."""

        def full(*a: Any) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", full)
        with pytest.raises(KeyringError, match="Cannot write the keyring .*No space left"):
            Keyring.create(tmp_path / "keyring.json")
        assert [p.name for p in tmp_path.iterdir()] == ["keyring.json.lock"]

    def test_lock_cannot_be_taken(self, tmp_path: Path) -> None:
        """An unusable lock file path gives a clear KeyringError."""
        (tmp_path / "keyring.json.lock").mkdir()
        with pytest.raises(KeyringError, match="Cannot lock the keyring"):
            Keyring.create(tmp_path / "keyring.json")


class TestLoad:
    """Keyring.load reads a good file and refuses exposed or damaged ones with a fix."""

    def test_round_trip(self, ring_file: Path) -> None:
        """A loaded keyring has the created key and opens what it sealed."""
        ring = Keyring.load(ring_file)
        assert ring.active_id == _doc(ring_file)["active"]

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602])
    def test_refuses_files_others_can_access(self, ring_file: Path, mode: int) -> None:
        """Group or world access is refused with the mode and the chmod command to run."""
        ring_file.chmod(mode)
        with pytest.raises(KeyringError, match=rf"\(mode {mode:04o}\); run `chmod 600 {ring_file}`"):
            Keyring.load(ring_file)

    def test_accepts_owner_read_only(self, ring_file: Path) -> None:
        """Mode 0400 is fine."""
        ring_file.chmod(0o400)
        assert len(Keyring.load(ring_file)) == 1

    def test_missing_file_says_how_to_create_one(self, tmp_path: Path) -> None:
        """A missing keyring points at `keys init` and ATOMIC_KEY."""
        with pytest.raises(KeyringError, match="atomic-usage keys init"):
            Keyring.load(tmp_path / "nope.json")

    def test_unreadable_path(self, tmp_path: Path) -> None:
        """A folder in place of the file gives a clear KeyringError."""
        with pytest.raises(KeyringError, match="Cannot read the keyring"):
            Keyring.load(tmp_path)

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            (lambda d: "{not json", "not JSON"),
            (lambda d: [], 'no "format"'),
            (lambda d: {**d, "format": "other"}, 'no "format"'),
            (lambda d: {**d, "version": 2}, "version 2, expected 1"),
            (lambda d: {**d, "keys": []}, "no keys"),
            (lambda d: {**d, "keys": ["x"]}, "key #0 has no base64 'key'"),
            (lambda d: {**d, "keys": [{**d["keys"][0], "key": "***"}]}, "key #0 is not base64 of 32 bytes"),
            (lambda d: {**d, "keys": [{**d["keys"][0], "key": "AAAA"}]}, "key #0 is not base64 of 32 bytes"),
            (lambda d: {**d, "keys": [{**d["keys"][0], "created": "May"}]}, "bad 'created' date 'May'"),
            (lambda d: {**d, "keys": [{**d["keys"][0], "created": 5}]}, "bad 'created' date 5"),
            (lambda d: {**d, "keys": [{**d["keys"][0], "id": "0000"}]}, "does not match its id '0000'"),
            (lambda d: {**d, "active": "0000"}, "active key '0000' is not among"),
        ],
    )
    def test_malformed_files(self, ring_file: Path, change: Any, message: str) -> None:
        """Each damage is named, with the advice to restore a backup, and no key bytes."""
        doc = _doc(ring_file)
        secret = doc["keys"][0]["key"]
        _rewrite(ring_file, change(doc))
        with pytest.raises(KeyringError, match=message) as info:
            Keyring.load(ring_file)
        assert "restore it from a backup" in str(info.value) and secret not in str(info.value)

    def test_key_without_date_loads(self, ring_file: Path) -> None:
        """A key entry with no creation date is accepted (created is None)."""
        doc = _doc(ring_file)
        doc["keys"][0]["created"] = None
        _rewrite(ring_file, doc)
        assert Keyring.load(ring_file).keys()[0].created is None


class TestFromKey:
    """ATOMIC_KEY gives a one-key keyring, validated without echoing the value."""

    def test_standard_and_urlsafe_base64(self) -> None:
        """Both base64 alphabets decode to the same key and id."""
        raw = bytes(range(250, 256)) * 5 + b"\xfb\xff"
        std, url = base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()
        assert std != url
        assert Keyring.from_key(std).active_id == Keyring.from_key(url).active_id == key_id_for(raw)

    @pytest.mark.parametrize(
        ("value", "message"),
        [("not base64!", "is not valid base64"), (base64.b64encode(b"short").decode(), "decodes to 5 bytes")],
    )
    def test_bad_values(self, value: str, message: str) -> None:
        """A bad value raises ConfigError naming ATOMIC_KEY and how to make one, not the value."""
        with pytest.raises(ConfigError, match=message) as info:
            Keyring.from_key(value)
        assert info.value.name == "ATOMIC_KEY" and value not in str(info.value)
        assert "os.urandom(32)" in str(info.value)

    def test_cannot_rotate(self) -> None:
        """An ATOMIC_KEY keyring refuses to rotate and points at keyring files."""
        ring = Keyring.from_key(base64.b64encode(os.urandom(32)).decode())
        with pytest.raises(KeyringError, match="keys init"):
            ring.rotate()
        assert ring.path is None and ring.keys()[0].created is None


class TestRotateRetire:
    """rotate adds an active key, retire removes an old one; both persist at once."""

    def test_rotate_persists_and_keeps_old_keys(self, ring_file: Path) -> None:
        """After a rotation the file holds both keys and the new one is active."""
        ring = Keyring.load(ring_file)
        old = ring.active_id
        new = ring.rotate()
        reloaded = Keyring.load(ring_file)
        assert reloaded.active_id == new and old in reloaded and len(reloaded) == 2
        assert [k.active for k in reloaded.keys()] == [False, True]
        assert _mode(ring_file) == 0o600

    def test_rotations_by_two_processes_are_both_kept(self, ring_file: Path) -> None:
        """Two holders of the same file rotating in turn lose no key."""
        a, b = Keyring.load(ring_file), Keyring.load(ring_file)
        ka, kb = a.rotate(), b.rotate()
        final = Keyring.load(ring_file)
        assert ka in final and kb in final and final.active_id == kb and len(final) == 3

    def test_memory_keyring_rotates_without_a_file(self, ring: Keyring) -> None:
        """A generated keyring rotates in memory."""
        new = ring.rotate()
        assert ring.active_id == new and len(ring) == 2 and ring.path is None

    def test_retire_persists(self, ring_file: Path) -> None:
        """A retired key is gone from the file."""
        ring = Keyring.load(ring_file)
        old = ring.active_id
        ring.rotate()
        ring.retire(old)
        assert old not in Keyring.load(ring_file) and len(ring) == 1

    def test_cannot_retire_the_active_key(self, ring: Keyring) -> None:
        """Retiring the active key is refused with the procedure to follow."""
        with pytest.raises(KeyringError, match="rotate` first"):
            ring.retire(ring.active_id)

    def test_retire_unknown_key(self, ring: Keyring) -> None:
        """Retiring an id the keyring lacks raises UnknownKeyError."""
        with pytest.raises(UnknownKeyError, match="'nope'"):
            ring.retire("nope")


class TestSecrecy:
    """Key bytes never show in reprs, pickles or key listings."""

    def test_reprs_hide_key_bytes(self, ring: Keyring) -> None:
        """The keyring and key reprs show ids only."""
        key = next(iter(ring._keys.values()))
        for text in (repr(ring), repr(key), repr(ring.keys())):
            assert ring.active_id in text
            for form in (base64.b64encode(key.secret).decode(), key.secret.hex(), repr(key.secret)):
                assert form not in text

    def test_cannot_be_pickled(self, ring: Keyring) -> None:
        """Pickling is refused so that keys never leave the process by accident."""
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(ring)


class TestLoadOrCreate:
    """load_or_create_keyring gives the start-up keyring and creates it on first start."""

    def test_first_start_creates_and_says_where(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        """The first call creates data_dir/keyring.json and logs its path; the second loads it."""
        settings = Settings(data_dir=tmp_path / "d")
        with caplog.at_level(logging.INFO, logger="atomic_usage.security"):
            ring, created = load_or_create_keyring(settings)
        assert created and ring.path == tmp_path / "d" / "keyring.json"
        assert any(str(ring.path) in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
        again, created = load_or_create_keyring(settings)
        assert not created and again.active_id == ring.active_id

    def test_atomic_key_wins(self, tmp_path: Path) -> None:
        """With ATOMIC_KEY set, no file is created."""
        key = base64.b64encode(os.urandom(32)).decode()
        ring, created = load_or_create_keyring(Settings(data_dir=tmp_path, key=key))
        assert not created and ring.path is None and not list(tmp_path.iterdir())

    def test_explicit_path(self, tmp_path: Path) -> None:
        """A given path is used instead of data_dir/keyring.json."""
        ring, created = load_or_create_keyring(Settings(data_dir=tmp_path / "d"), path=tmp_path / "k.json")
        assert created and ring.path == tmp_path / "k.json"

    def test_existing_bad_file_is_not_replaced(self, ring_file: Path) -> None:
        """An exposed keyring raises instead of being silently replaced by a new one."""
        ring_file.chmod(0o644)
        before = ring_file.read_bytes()
        with pytest.raises(KeyringError, match="chmod 600"):
            load_or_create_keyring(Settings(data_dir=ring_file.parent))
        assert ring_file.read_bytes() == before

    def test_lost_creation_race_loads_the_winner(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """When another process creates the file first, its keyring is loaded."""
        real_create = Keyring.create

        def racing_create(path: Path) -> Keyring:
            real_create(path)  # the other process wins
            raise KeyringError("exists already")

        monkeypatch.setattr(Keyring, "create", staticmethod(racing_create))
        ring, created = load_or_create_keyring(Settings(data_dir=tmp_path))
        assert not created and ring.path == tmp_path / "keyring.json"

    def test_creation_failure_is_raised(self, tmp_path: Path) -> None:
        """A keyring that can neither be loaded nor created raises the creation error."""
        (tmp_path / "afile").write_text("")
        with pytest.raises(KeyringError, match="Cannot create the folder"):
            load_or_create_keyring(Settings(data_dir=tmp_path / "afile"))

    def test_module_logger_name(self) -> None:
        """Keyring events log under atomic_usage.security.keyring."""
        assert keyring_mod.logger.name == "atomic_usage.security.keyring"
