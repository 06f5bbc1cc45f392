"""Fixtures shared by the security tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from atomic_usage.security import Keyring


@pytest.fixture
def ring() -> Keyring:
    """A keyring of one key, in memory."""
    return Keyring.generate()


@pytest.fixture
def ring_file(tmp_path: Path) -> Path:
    """The path of a freshly created keyring file."""
    path = tmp_path / "data" / "keyring.json"
    Keyring.create(path)
    return path


@pytest.fixture(autouse=True)
def _no_atomic_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keeps the developer's own ATOMIC_* variables and data folder out of the tests."""
    for name in ("ATOMIC_KEY", "ATOMIC_KEYRING"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ATOMIC_DATA_DIR", str(tmp_path / "data"))
