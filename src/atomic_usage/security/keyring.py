"""The keyring: AES-256 keys with ids and dates, one of them active, kept in a 0600 file.

A keyring holds one or more 32-byte keys. The *active* key seals new results;
every key in the ring opens what it sealed, so a rotation never makes old
results unreadable. Keys come from one of two places:

* a keyring file, created by ``atomic-usage keys init`` (or on first start by
  :func:`load_or_create_keyring`) under ``<data_dir>/keyring.json``;
* the ``ATOMIC_KEY`` environment variable: the standard base64 encoding of 32
  random bytes, e.g. from ``python -c "import base64, os;
  print(base64.b64encode(os.urandom(32)).decode())"``. Such a keyring has one
  key and cannot be rotated.

File format (UTF-8 JSON, version 1)::

    {
      "format": "atomic-usage-keyring",
      "version": 1,
      "active": "9c1e4f0a3b7d2e65",
      "keys": [
        {"id": "9c1e4f0a3b7d2e65", "created": "2024-05-01T12:00:00+00:00", "key": "<base64 of 32 bytes>"}
      ]
    }

A key id is the first 16 hex digits of ``SHA-256("atomic-usage/key-id/v1\\0" || key)``:
stable for a key wherever it comes from (so ``ATOMIC_KEY`` seals under the same
id on every start), checked on load (a damaged key is caught), and revealing
nothing usable about the key.

The file is written atomically (a temporary file created with mode 0600, written,
fsynced, then renamed over the old one) and changed under an exclusive lock, so
two processes rotating at once cannot lose a key. A keyring file that its group
or other users may read or write is refused. Neither key bytes nor their
encodings ever appear in a ``repr``, a log record or an error message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..errors import ConfigError, KeyringError, UnknownKeyError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from ..config import Settings

__all__ = [
    "KEYRING_FILENAME",
    "KEY_BYTES",
    "KeyInfo",
    "Keyring",
    "key_id_for",
    "load_or_create_keyring",
]

KEY_BYTES: Final = 32
"""Length of every key in bytes (AES-256)."""

KEYRING_FILENAME: Final = "keyring.json"
"""Name of the keyring file inside ``Settings.data_dir``."""

_FORMAT: Final = "atomic-usage-keyring"
_VERSION: Final = 1
_ID_DOMAIN: Final = b"atomic-usage/key-id/v1\0"
_ENV_NAME: Final = "ATOMIC_KEY"

logger = logging.getLogger(__name__)


def key_id_for(key: bytes) -> str:
    """The id of a key: 16 hex digits of a domain-separated SHA-256 of it.

    Args:
        key: the 32 key bytes.

    Returns:
        The key id, e.g. ``"9c1e4f0a3b7d2e65"``.
    """
    return hashlib.sha256(_ID_DOMAIN + key).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a key: its id, when it was made, whether it seals.

    Attributes:
        key_id: the key id carried by every envelope it sealed.
        created: when the key was generated (UTC); ``None`` for ``ATOMIC_KEY``.
        active: whether this key seals new results.
    """

    key_id: str
    created: dt.datetime | None
    active: bool


class _Key:
    """One key: its bytes, kept out of every repr, and its lazily built cipher."""

    __slots__ = ("_aead", "created", "key_id", "secret")

    def __init__(self, secret: bytes, created: dt.datetime | None) -> None:
        self.secret = secret
        self.created = created
        self.key_id = key_id_for(secret)
        self._aead: AESGCM | None = None

    def aead(self) -> AESGCM:
        # Built once per key and process: AESGCM holds no per-call state, and
        # rebuilding it for every seal costs more than the encryption of a result.
        if self._aead is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._aead = AESGCM(self.secret)
        return self._aead

    def __repr__(self) -> str:
        return f"<key {self.key_id}>"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class Keyring:
    """A set of AES-256 keys, one of them active. Build with a class method, not directly.

    Use :meth:`create` for a new keyring file, :meth:`load` to read one,
    :meth:`from_key` for an ``ATOMIC_KEY`` value and :meth:`generate` for a
    keyring that lives in memory only (tests, benchmarks). Changes made by
    :meth:`rotate` and :meth:`retire` are written to the file at once.

    A keyring may be shared between threads: changes replace its key table as a
    whole, so a concurrent :func:`~atomic_usage.security.seal` sees either the
    old or the new table. A process that loaded the file before another process
    rotated it keeps sealing with its old active key until it loads it again.

    >>> ring = Keyring.generate()
    >>> len(ring), ring.active_id in ring
    (1, True)
    """

    def __init__(self, keys: Mapping[str, _Key], active_id: str, *, path: Path | None, source: str) -> None:
        self._keys: dict[str, _Key] = dict(keys)
        self._active_id = active_id
        self._path = path
        self._source = source
        self._lock = threading.Lock()

    # --- construction ---------------------------------------------------
    @classmethod
    def generate(cls) -> Keyring:
        """A keyring of one fresh random key, held in memory only."""
        key = _Key(secrets.token_bytes(KEY_BYTES), _now())
        return cls({key.key_id: key}, key.key_id, path=None, source="memory")

    @classmethod
    def from_key(cls, encoded: str, *, name: str = _ENV_NAME) -> Keyring:
        """A keyring of one key given as base64 text (the ``ATOMIC_KEY`` value).

        Args:
            encoded: standard or URL-safe base64 of exactly 32 bytes.
            name: the setting the value came from, named in error messages.

        Raises:
            ConfigError: the value is not base64 of 32 bytes. The message never
                repeats the value.
        """
        secret = _decode_key(encoded.strip())
        if secret is None or len(secret) != KEY_BYTES:
            got = "is not valid base64" if secret is None else f"decodes to {len(secret)} bytes"
            raise ConfigError(
                f"{name} {got}; it must be the base64 encoding of {KEY_BYTES} random bytes. Make one with "
                '`python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"`.',
                name=name,
            )
        key = _Key(secret, None)
        return cls({key.key_id: key}, key.key_id, path=None, source=name)

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> Keyring:
        """Creates a keyring file holding one new key, with mode 0600 from the start.

        Missing parent folders are created with mode 0700.

        Args:
            path: where to write the keyring; must not exist yet.

        Raises:
            KeyringError: the file exists already, or cannot be written.
        """
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise KeyringError(f"Cannot create the folder {p.parent} for the keyring: {e.strerror}.") from None
        with _file_lock(p):
            if p.exists():
                raise KeyringError(
                    f"The keyring {p} exists already; load it, or move it away first if you "
                    "really mean to start over (results it sealed will no longer open)."
                )
            ring = cls.generate()
            ring._path, ring._source = p, str(p)
            ring._save(p)
        logger.info("Created the keyring %s with key %s.", p, ring.active_id)
        return ring

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keyring:
        """Reads a keyring file, refusing one that other users may read or write.

        Args:
            path: the keyring file.

        Raises:
            KeyringError: the file is missing, unreadable, malformed, or its mode
                gives its group or others access; the message says how to fix it.
        """
        p = Path(path)
        keys, active = _read_file(p)
        return cls(keys, active, path=p, source=str(p))

    # --- queries --------------------------------------------------------
    @property
    def path(self) -> Path | None:
        """The keyring file, or ``None`` for a keyring from ``ATOMIC_KEY`` or memory."""
        return self._path

    @property
    def active_id(self) -> str:
        """The id of the key that seals new results."""
        return self._active_id

    def keys(self) -> list[KeyInfo]:
        """Id, creation date and active flag of every key, oldest first; never key bytes."""
        table, active = self._keys, self._active_id
        return [KeyInfo(k.key_id, k.created, k.key_id == active) for k in table.values()]

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Keyring(source={self._source!r}, keys={list(self._keys)!r}, active={self._active_id!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Pickling would copy key bytes wherever the pickle goes (a spill file, a
        # cache, a crash dump); a worker process loads the keyring itself instead.
        raise TypeError(
            "A Keyring cannot be pickled, so that keys never leave the process by accident; "
            "load it in the other process with Keyring.load() or ATOMIC_KEY."
        )

    def _aead(self, key_id: str) -> AESGCM:
        """The cipher of a key; for :mod:`atomic_usage.security.seal` only.

        Raises:
            UnknownKeyError: no key has this id.
        """
        key = self._keys.get(key_id)
        if key is None:
            raise UnknownKeyError(key_id)
        return key.aead()

    # --- changes --------------------------------------------------------
    def rotate(self) -> str:
        """Adds a new key and makes it the active one; older keys still open results.

        With a keyring file, the change is made under the file lock on the
        file's current content (so a rotation by another process is kept) and
        written before this returns.

        Returns:
            The id of the new active key.

        Raises:
            KeyringError: the keyring comes from ``ATOMIC_KEY``, which holds one
                key only, or the file cannot be written.
        """
        if self._source == _ENV_NAME:
            raise KeyringError(
                "The key comes from ATOMIC_KEY, which holds one key and cannot be rotated; "
                "use a keyring file (`atomic-usage keys init`) to rotate keys."
            )
        with self._changing():
            key = _Key(secrets.token_bytes(KEY_BYTES), _now())
            self._keys = {**self._keys, key.key_id: key}
            self._active_id = key.key_id
        logger.info("Rotated the keyring %s: key %s now seals new results.", self._source, key.key_id)
        return key.key_id

    def retire(self, key_id: str) -> None:
        """Removes a key. Results it sealed no longer open: re-seal them first.

        Args:
            key_id: the key to remove; not the active one.

        Raises:
            UnknownKeyError: no key has this id.
            KeyringError: the key is the active one (rotate first), or the file
                cannot be written.
        """
        with self._changing():
            if key_id not in self._keys:
                raise UnknownKeyError(key_id)
            if key_id == self._active_id:
                raise KeyringError(
                    f"The key {key_id!r} is the active key and cannot be retired; "
                    "run `atomic-usage keys rotate` first, then `keys reseal`, then retire it."
                )
            self._keys = {k: v for k, v in self._keys.items() if k != key_id}
        logger.info("Retired key %s from the keyring %s.", key_id, self._source)

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Runs a change on the freshest keys and saves them, under both locks."""
        with self._lock:
            if self._path is None:
                yield
                return
            with _file_lock(self._path):
                self._keys, self._active_id = _read_file(self._path)
                yield
                self._save(self._path)

    def _save(self, path: Path) -> None:
        doc = {
            "format": _FORMAT,
            "version": _VERSION,
            "active": self._active_id,
            "keys": [
                {
                    "id": k.key_id,
                    "created": k.created.isoformat() if k.created else None,
                    "key": base64.b64encode(k.secret).decode("ascii"),
                }
                for k in self._keys.values()
            ],
        }
        _write_private(path, json.dumps(doc, indent=2).encode("utf-8") + b"\n")


# --- file helpers -----------------------------------------------------------
def _decode_key(text: str) -> bytes | None:
    """Strict base64 (standard or URL-safe) to bytes, or ``None`` when it is not base64."""
    try:
        return base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None


def _check_mode(path: Path, mode: int) -> None:
    if os.name == "nt":  # pragma: no cover - POSIX modes mean little on Windows
        return
    if mode & 0o077:
        raise KeyringError(
            f"The keyring {path} is readable or writable by others (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}`."
        )


def _malformed(path: Path, what: str) -> KeyringError:
    return KeyringError(
        f"The keyring {path} is malformed ({what}); restore it from a backup, "
        "or point --keyring / ATOMIC_KEYRING at the right file."
    )


def _read_file(path: Path) -> tuple[dict[str, _Key], str]:
    """Reads and checks a keyring file: mode first (on the open file), then content."""
    try:
        with open(path, "rb") as f:
            _check_mode(path, os.fstat(f.fileno()).st_mode)
            raw = f.read()
    except FileNotFoundError:
        raise KeyringError(
            f"There is no keyring at {path}; create one with `atomic-usage keys init`, or set ATOMIC_KEY."
        ) from None
    except OSError as e:
        raise KeyringError(f"Cannot read the keyring {path}: {e.strerror}.") from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _malformed(path, "not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise _malformed(path, f'no "format": "{_FORMAT}"')
    if doc.get("version") != _VERSION:
        raise _malformed(path, f"version {doc.get('version')!r}, expected {_VERSION}")
    entries = doc.get("keys")
    if not isinstance(entries, list) or not entries:
        raise _malformed(path, "no keys")
    keys: dict[str, _Key] = {}
    for i, entry in enumerate(entries):
        key = _parse_entry(path, i, entry)
        keys[key.key_id] = key
    active = doc.get("active")
    if not isinstance(active, str) or active not in keys:
        raise _malformed(path, f"the active key {active!r} is not among its keys")
    return keys, active


def _parse_entry(path: Path, i: int, entry: object) -> _Key:
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        raise _malformed(path, f"key #{i} has no base64 'key'")
    secret = _decode_key(entry["key"])
    if secret is None or len(secret) != KEY_BYTES:
        raise _malformed(path, f"key #{i} is not base64 of {KEY_BYTES} bytes")
    created_raw = entry.get("created")
    try:
        created = dt.datetime.fromisoformat(created_raw) if created_raw is not None else None
    except (TypeError, ValueError):
        raise _malformed(path, f"key #{i} has a bad 'created' date {created_raw!r}") from None
    key = _Key(secret, created)
    if entry.get("id") != key.key_id:
        raise _malformed(path, f"key #{i} does not match its id {entry.get('id')!r}")
    return key


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock beside the keyring (``keyring.json.lock``), held across read-change-write."""
    if os.name == "nt":  # pragma: no cover - no flock on Windows; single-writer there
        yield
        return
    import fcntl

    try:
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise KeyringError(f"Cannot lock the keyring {path}: {e.strerror}.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_private(path: Path, data: bytes, *, what: str = "the keyring") -> None:
    """Writes ``data`` to ``path`` atomically, the new file being 0600 from its creation.

    The bytes go to a temporary file opened with ``O_EXCL`` and mode 0600 (so no
    moment exists when they are readable by others), are fsynced, and the file is
    renamed over ``path``; the folder is fsynced so the rename survives a crash.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise KeyringError(f"Cannot write {what} {path}: {e.strerror}.") from None


def load_or_create_keyring(settings: Settings, *, path: Path | None = None) -> tuple[Keyring, bool]:
    """The keyring for a start-up: ``ATOMIC_KEY`` if set, else the file, created when missing.

    Args:
        settings: supplies ``key`` (``ATOMIC_KEY``) and ``data_dir``.
        path: the keyring file; default ``settings.data_dir / "keyring.json"``.

    Returns:
        The keyring, and whether this call created its file (the caller should
        tell the user where it is: it must be backed up with the results).

    Raises:
        ConfigError: ``ATOMIC_KEY`` is not base64 of 32 bytes.
        KeyringError: the file exists but cannot be used.
    """
    if settings.key:
        return Keyring.from_key(settings.key), False
    p = path if path is not None else settings.data_dir / KEYRING_FILENAME
    try:
        return Keyring.load(p), False
    except KeyringError:
        if p.exists():
            raise
    try:
        ring = Keyring.create(p)
    except KeyringError:
        if not p.exists():
            raise
        return Keyring.load(p), False  # another process created it first
    logger.warning(
        "No keyring was found, so a new one was created at %s; back it up with the results, "
        "which cannot be opened without it.",
        p,
    )
    return ring, True
