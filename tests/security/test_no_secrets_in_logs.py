"""A run through every keyring and sealing path leaves no key material or plaintext in the log file."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from atomic_usage.config import Settings
from atomic_usage.errors import AtomicError
from atomic_usage.security import Keyring, load_or_create_keyring, open_result, open_sealed, reseal, seal

PLAINTEXT_MARKER = "plaintext-cpu-41.57-web-secret"


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """Every logger at DEBUG into one file, with tracebacks, for the duration of a test."""
    path = tmp_path / "run.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def _forms(secret: bytes) -> list[bytes]:
    """Every way a key could be written down: raw, base64 (both alphabets, with and without padding), hex."""
    b64 = base64.b64encode(secret)
    url = base64.urlsafe_b64encode(secret)
    return [
        secret,
        b64,
        b64.rstrip(b"="),
        url,
        url.rstrip(b"="),
        secret.hex().encode(),
        secret.hex().upper().encode(),
    ]


class TestNoSecretsInLogs:
    """After a run that logs everything, the log file holds no key in any form and no plaintext."""

    def test_log_scan(self, tmp_path: Path, log_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Create, rotate, seal, open, reseal, retire and every error path, then scan the log."""
        log = logging.getLogger("test.run")
        env_key = base64.b64encode(b"\x11" * 7 + bytes(range(25))).decode()
        ring, created = load_or_create_keyring(Settings(data_dir=tmp_path / "d"))
        assert created
        result = {"id": "web-1", "note": PLAINTEXT_MARKER}
        old = seal(result, keyring=ring, task_id="t", record_id="web-1", model_version="m")
        first = ring.active_id
        ring.rotate()
        keys = [k.secret for k in ring._keys.values()]  # both, before one is retired
        new = reseal(old, keyring=ring)
        log.debug("opened %s", open_result(new, keyring=ring)["id"])
        ring.retire(first)
        env_ring = Keyring.from_key(env_key)
        env_sealed = seal(result, keyring=env_ring, task_id="t", record_id="web-1", model_version="m")

        def attempts() -> Iterator[object]:
            tampered = json.loads(new)
            tampered["ad"]["task_id"] = "t2"
            yield lambda: open_result(tampered, keyring=ring)
            yield lambda: open_result(old, keyring=ring)
            yield lambda: open_result(new, keyring=ring, record_id="web-2")
            yield lambda: open_sealed(new.replace('"ct":"', '"ct":"A'), keyring=ring)
            yield lambda: open_result(env_sealed, keyring=ring)
            yield lambda: Keyring.from_key(env_key[:-4])
            yield lambda: ring.retire(ring.active_id)
            path = ring.path
            assert path is not None

            def load_exposed() -> Keyring:
                path.chmod(0o644)
                return Keyring.load(path)

            yield load_exposed

        for attempt in attempts():
            try:
                attempt()  # type: ignore[operator]
            except AtomicError as e:
                log.exception("expected failure: %r", e)
            else:  # pragma: no cover - every attempt above must fail
                pytest.fail("an attempt did not fail")

        text = log_file.read_bytes()
        assert b"expected failure" in text and str(ring.path).encode() in text  # the log did capture the run
        keys += [k.secret for k in env_ring._keys.values()]
        path = ring.path
        assert path is not None
        path.chmod(0o600)
        keys += [base64.b64decode(k["key"]) for k in json.loads(path.read_text())["keys"]]
        assert len(set(keys)) == 3
        for secret in keys:
            for form in _forms(secret):
                assert form not in text
        for form in _forms(base64.b64decode(env_key)):
            assert form not in text
        assert PLAINTEXT_MARKER.encode() not in text
