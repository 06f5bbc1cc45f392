"""Sealing and opening of results: AES-256-GCM envelopes bound to a task, a record and a model.

A sealed result is an *envelope*, a compact JSON object (UTF-8, no spaces)::

    {"v":1,"kid":"9c1e4f0a3b7d2e65","cty":"json","n":"<base64 of 12 bytes>","ct":"<base64>",
     "ad":{"task_id":"t-42","record_id":"web-1","model_version":"neural-2024.05"}}

==========  ==================================================================
``v``       format version, 1
``kid``     id of the key that sealed it (see :mod:`.keyring`)
``cty``     what the plaintext is: ``"json"`` (a JSON object) or ``"bytes"``
``n``       the 96-bit GCM nonce, fresh from ``os.urandom`` for every seal
``ct``      ciphertext followed by the 16-byte GCM tag
``ad``      the associated data in clear: task id, record id, model version
==========  ==================================================================

``n`` and ``ct`` are standard base64 with padding, and must be in canonical form
(a different encoding of the same bytes is refused, so that no byte of an
envelope can change without the change being detected). The associated data
authenticated by GCM is the compact, key-sorted JSON of
``{"ad": ..., "cty": ..., "kid": ..., "v": ...}``: a sealed result cannot be
moved to another task, record or model version, nor relabelled as another
content type or key, without opening failing.

Any failure to open is a :class:`~atomic_usage.errors.SecurityError`:
:class:`~atomic_usage.errors.UnknownKeyError` when the keyring lacks the key,
:class:`~atomic_usage.errors.IntegrityError` for everything else (altered or
malformed envelope, other associated data, wrong key bytes). Error messages and
the exceptions' context never carry plaintext or key bytes.

>>> from atomic_usage.security import Keyring
>>> ring = Keyring.generate()
>>> env = seal({"cpu": 41.5}, keyring=ring, task_id="t-1", record_id="web-1", model_version="m1")
>>> open_result(env, keyring=ring, task_id="t-1")
{'cpu': 41.5}
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, Literal, TypeVar

from ..errors import IntegrityError, SecurityError
from .keyring import Keyring

__all__ = [
    "ENVELOPE_VERSION",
    "Envelope",
    "NONCE_BYTES",
    "ResealReport",
    "open_result",
    "open_sealed",
    "reseal",
    "reseal_all",
    "seal",
    "seal_json",
]

ENVELOPE_VERSION: Final = 1
"""The envelope format written by :func:`seal`."""

NONCE_BYTES: Final = 12
"""GCM nonce length in bytes (96 bits, the size GCM is designed for)."""

_TAG_BYTES: Final = 16
_CONTENT_TYPES: Final = ("json", "bytes")
_AD_FIELDS: Final = ("task_id", "record_id", "model_version")
_FIELDS: Final = frozenset({"v", "kid", "cty", "n", "ct", "ad"})

_quote: Final = json.encoder.encode_basestring
_quote_ascii: Final = json.encoder.encode_basestring_ascii
_ENVELOPE_TEMPLATE: Final = (
    '{"v":%d,"kid":%s,"cty":%s,"n":"%s","ct":"%s","ad":{"task_id":%s,"record_id":%s,"model_version":%s}}'
)
_AAD_TEMPLATE: Final = '{"ad":{"model_version":%s,"record_id":%s,"task_id":%s},"cty":%s,"kid":%s,"v":%d}'

ContentType = Literal["json", "bytes"]
K = TypeVar("K")


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """A sealed result, parsed. :func:`seal` returns its JSON text; this is for inspection.

    Attributes:
        key_id: id of the key that sealed it.
        nonce: the 12-byte GCM nonce.
        ciphertext: ciphertext followed by the 16-byte tag.
        task_id: the task the result belongs to.
        record_id: the record (machine) the result belongs to.
        model_version: the model version that produced it.
        content_type: ``"json"`` for a JSON object, ``"bytes"`` for raw bytes.
        version: envelope format version.
    """

    key_id: str
    nonce: bytes
    ciphertext: bytes
    task_id: str
    record_id: str
    model_version: str
    content_type: ContentType = "json"
    version: int = ENVELOPE_VERSION

    @classmethod
    def from_json(cls, text: str | bytes) -> Envelope:
        """Parses an envelope's JSON text.

        Raises:
            IntegrityError: the text is not a well-formed envelope.
        """
        with _map_errors():
            return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, obj: Any) -> Envelope:
        """Builds an envelope from its JSON object (e.g. one embedded in a larger document).

        Raises:
            IntegrityError: the object is not a well-formed envelope.
        """
        if not isinstance(obj, dict) or set(obj) != _FIELDS:
            raise IntegrityError(
                f"This is not a sealed result: an envelope has exactly the fields {sorted(_FIELDS)}; "
                "check that the file or field holds what `seal()` wrote."
            )
        if type(obj["v"]) is not int or obj["v"] != ENVELOPE_VERSION:
            raise IntegrityError(
                f"The envelope has format version {obj['v']!r}, but only version {ENVELOPE_VERSION} "
                "can be opened; upgrade atomic-usage or check that the envelope is intact."
            )
        ad = obj["ad"]
        if not isinstance(ad, dict) or set(ad) != set(_AD_FIELDS) or not all(isinstance(v, str) for v in ad.values()):
            raise IntegrityError(f"The envelope's 'ad' must hold the strings {list(_AD_FIELDS)}.")
        kid, cty = obj["kid"], obj["cty"]
        if not isinstance(kid, str) or cty not in _CONTENT_TYPES:
            raise IntegrityError("The envelope's 'kid' or 'cty' is malformed; it was altered or damaged.")
        nonce, ct = _b64decode(obj["n"], "n"), _b64decode(obj["ct"], "ct")
        if len(nonce) != NONCE_BYTES or len(ct) < _TAG_BYTES:
            raise IntegrityError("The envelope's nonce or ciphertext is too short; it was altered or damaged.")
        return cls(kid, nonce, ct, ad["task_id"], ad["record_id"], ad["model_version"], cty)

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a JSON-ready object (field order as documented)."""
        return {
            "v": self.version,
            "kid": self.key_id,
            "cty": self.content_type,
            "n": base64.b64encode(self.nonce).decode("ascii"),
            "ct": base64.b64encode(self.ciphertext).decode("ascii"),
            "ad": {"task_id": self.task_id, "record_id": self.record_id, "model_version": self.model_version},
        }

    def to_json(self) -> str:
        """The envelope as compact JSON text, the form :func:`seal` returns.

        Equal to ``json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)``,
        formatted directly because this runs once per seal.
        """
        return _ENVELOPE_TEMPLATE % (
            self.version,
            _quote(self.key_id),
            _quote(self.content_type),
            base64.b64encode(self.nonce).decode("ascii"),
            base64.b64encode(self.ciphertext).decode("ascii"),
            _quote(self.task_id),
            _quote(self.record_id),
            _quote(self.model_version),
        )

    def associated_data(self) -> bytes:
        """The bytes GCM authenticates besides the ciphertext (see the module docstring)."""
        return _associated_data(
            self.version, self.key_id, self.content_type, self.task_id, self.record_id, self.model_version
        )

    def __repr__(self) -> str:
        return (
            f"Envelope(key_id={self.key_id!r}, task_id={self.task_id!r}, record_id={self.record_id!r}, "
            f"model_version={self.model_version!r}, content_type={self.content_type!r}, "
            f"ciphertext=<{len(self.ciphertext)} bytes>)"
        )


def _associated_data(v: int, kid: str, cty: str, task_id: str, record_id: str, model_version: str) -> bytes:
    # The key-sorted, compact, ASCII-only JSON of {"ad": {...}, "cty", "kid", "v"}, formatted
    # directly (json.dumps costs more than the encryption of a small result).
    return (
        _AAD_TEMPLATE
        % (
            _quote_ascii(model_version),
            _quote_ascii(record_id),
            _quote_ascii(task_id),
            _quote_ascii(cty),
            _quote_ascii(kid),
            v,
        )
    ).encode("ascii")


def _b64decode(value: object, field: str) -> bytes:
    if not isinstance(value, str):
        raise IntegrityError(f"The envelope's {field!r} is not base64 text; it was altered or damaged.")
    try:
        raw = base64.b64decode(value)
    except (binascii.Error, ValueError):
        raise IntegrityError(f"The envelope's {field!r} is not base64; it was altered or damaged.") from None
    # Without validate=True, characters outside the alphabet are skipped, and
    # non-canonical base64 (unused trailing bits set) decodes to the same bytes:
    # comparing with the re-encoding refuses both, so every byte of the envelope
    # is covered by a check (and costs less than validate's regular expression).
    if base64.b64encode(raw).decode("ascii") != value:
        raise IntegrityError(f"The envelope's {field!r} is not canonical base64; it was altered or damaged.")
    return raw


@contextlib.contextmanager
def _map_errors(key_id: str | None = None) -> Iterator[None]:
    """Translates cryptography, base64, JSON and Unicode errors into our SecurityErrors.

    The upstream exception is dropped (``from None``), not chained: a
    ``UnicodeDecodeError`` or ``JSONDecodeError`` holds the text it failed on,
    which may be plaintext.
    """
    from cryptography.exceptions import InvalidTag

    try:
        yield
    except SecurityError:
        raise
    except InvalidTag:
        raise IntegrityError(
            f"The sealed result failed authentication with key {key_id!r}: it was altered, is bound to "
            "another task, record or model version, or the keyring holds other bytes under this key id. "
            "Check the task/record ids and that you loaded the keyring that sealed it."
        ) from None
    except (binascii.Error, UnicodeError, ValueError, TypeError, KeyError):
        raise IntegrityError(
            "The sealed result is malformed (not an envelope's JSON, bad base64 or bad encoding); "
            "it was altered or damaged, or is not a sealed result."
        ) from None


def _check_ad(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}; pass e.g. {name}=str(x).")
    return value


def seal(
    plaintext: bytes | bytearray | memoryview | Mapping[str, Any],
    *,
    keyring: Keyring,
    task_id: str,
    record_id: str,
    model_version: str,
) -> str:
    """Encrypts a result under the keyring's active key, bound to its task, record and model.

    Args:
        plaintext: a JSON-ready mapping (sealed as compact JSON, opened by
            :func:`open_result`) or bytes-like data (opened by :func:`open_sealed`).
        keyring: supplies the active key.
        task_id: the task the result belongs to.
        record_id: the record (machine id) the result is about.
        model_version: the model version that produced the result.

    Returns:
        The envelope as compact JSON text (see the module docstring).

    Raises:
        TypeError: an id is not a str, or ``plaintext`` is neither bytes nor a
            JSON-ready mapping.
    """
    ad = (
        _check_ad("task_id", task_id),
        _check_ad("record_id", record_id),
        _check_ad("model_version", model_version),
    )
    cty: ContentType
    if isinstance(plaintext, bytes | bytearray | memoryview):
        data, cty = bytes(plaintext), "bytes"
    elif isinstance(plaintext, Mapping):
        try:
            data = json.dumps(plaintext, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError):
            raise TypeError(
                "The result is not JSON-ready (a value is not a str, number, bool, None, list or dict, "
                "or is NaN/inf); convert it before sealing."
            ) from None
        cty = "json"
    else:
        raise TypeError(f"seal() takes bytes or a mapping, got {type(plaintext).__name__}.")
    return _seal_bytes(data, cty, keyring, *ad)


def seal_json(
    text: bytes | bytearray | memoryview,
    *,
    keyring: Keyring,
    task_id: str,
    record_id: str,
    model_version: str,
) -> str:
    """Seals a result already encoded as JSON: the envelope :func:`seal` makes of a mapping
    (content type ``"json"``, opened by :func:`open_result`), without encoding it again.

    For callers that have the result's JSON anyway (the engine sends the same text in its
    response); that it is a JSON object is the caller's promise: :func:`open_result` refuses
    an envelope whose plaintext is not one.

    Args:
        text: the UTF-8 JSON text of one JSON object.
        keyring: supplies the active key.
        task_id: the task the result belongs to.
        record_id: the record (machine id) the result is about.
        model_version: the model version that produced the result.

    Returns:
        The envelope as compact JSON text.

    Raises:
        TypeError: an id is not a str, or ``text`` is not bytes-like.

    >>> from atomic_usage.security import Keyring
    >>> ring = Keyring.generate()
    >>> env = seal_json(b'{"cpu":41.5}', keyring=ring, task_id="t-1", record_id="0", model_version="m1")
    >>> open_result(env, keyring=ring, task_id="t-1")
    {'cpu': 41.5}
    """
    ad = (
        _check_ad("task_id", task_id),
        _check_ad("record_id", record_id),
        _check_ad("model_version", model_version),
    )
    if not isinstance(text, bytes | bytearray | memoryview):
        raise TypeError(f"seal_json() takes the JSON text as bytes, got {type(text).__name__}.")
    return _seal_bytes(bytes(text), "json", keyring, *ad)


def _seal_bytes(
    data: bytes, cty: ContentType, keyring: Keyring, task_id: str, record_id: str, model_version: str
) -> str:
    kid = keyring.active_id
    nonce = os.urandom(NONCE_BYTES)
    aad = _associated_data(ENVELOPE_VERSION, kid, cty, task_id, record_id, model_version)
    ct = keyring._aead(kid).encrypt(nonce, data, aad)
    return Envelope(kid, nonce, ct, task_id, record_id, model_version, cty).to_json()


def _as_envelope(envelope: str | bytes | Envelope | Mapping[str, Any]) -> Envelope:
    if isinstance(envelope, Envelope):
        return envelope
    if isinstance(envelope, str | bytes):
        return Envelope.from_json(envelope)
    return Envelope.from_dict(dict(envelope))


def _open(
    envelope: str | bytes | Envelope | Mapping[str, Any],
    keyring: Keyring,
    expected: Mapping[str, str | None],
) -> tuple[Envelope, bytes]:
    env = _as_envelope(envelope)
    for name, want in expected.items():
        got = getattr(env, name)
        if want is not None and got != want:
            raise IntegrityError(
                f"The sealed result belongs to {name} {got!r}, not {want!r}; it was replayed or "
                "filed under the wrong id, and is refused."
            )
    aead = keyring._aead(env.key_id)
    with _map_errors(env.key_id):
        return env, aead.decrypt(env.nonce, env.ciphertext, env.associated_data())


def open_sealed(
    envelope: str | bytes | Envelope | Mapping[str, Any],
    *,
    keyring: Keyring,
    task_id: str | None = None,
    record_id: str | None = None,
    model_version: str | None = None,
) -> bytes:
    """Decrypts an envelope and returns its plaintext bytes, checking what it is bound to.

    Args:
        envelope: the JSON text :func:`seal` returned, its parsed JSON object, or an :class:`Envelope`.
        keyring: must hold the key named in the envelope.
        task_id: when given, the envelope must be bound to this task.
        record_id: when given, the envelope must be bound to this record.
        model_version: when given, the envelope must be bound to this model version.

    Returns:
        The plaintext (for a ``"json"`` envelope, its UTF-8 JSON text).

    Raises:
        UnknownKeyError: the keyring has no key with the envelope's id.
        IntegrityError: the envelope is malformed or altered, is bound to other
            ids than those given, or the key does not authenticate it.
    """
    expected = {"task_id": task_id, "record_id": record_id, "model_version": model_version}
    return _open(envelope, keyring, expected)[1]


def open_result(
    envelope: str | bytes | Envelope | Mapping[str, Any],
    *,
    keyring: Keyring,
    task_id: str | None = None,
    record_id: str | None = None,
    model_version: str | None = None,
) -> dict[str, Any]:
    """Opens an envelope sealed from a mapping and returns the result as a dict.

    Args and Raises are those of :func:`open_sealed`; in addition:

    Raises:
        SecurityError: the envelope holds raw bytes, not a JSON result.
    """
    expected = {"task_id": task_id, "record_id": record_id, "model_version": model_version}
    env, data = _open(envelope, keyring, expected)
    if env.content_type != "json":
        raise SecurityError("The envelope holds raw bytes, not a JSON result; open it with open_sealed().")
    # Decoded without _map_errors: a JSONDecodeError or UnicodeDecodeError holds the
    # plaintext, and raising inside their handler would chain it to our error.
    try:
        result = json.loads(data)
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise IntegrityError(
            "The envelope is marked as a JSON result but its content is not a JSON object; "
            "it was sealed by a faulty writer."
        )
    return result


def reseal(envelope: str | bytes | Envelope | Mapping[str, Any], *, keyring: Keyring) -> str:
    """Re-encrypts an envelope under the keyring's active key, keeping its bindings.

    An envelope already sealed with the active key is returned unchanged (as
    JSON text), so re-sealing a whole store twice costs one pass of reads.

    Raises:
        UnknownKeyError, IntegrityError: as for :func:`open_sealed`.
    """
    env, data = _open(envelope, keyring, {})
    if env.key_id == keyring.active_id:
        return env.to_json()
    return _seal_bytes(data, env.content_type, keyring, env.task_id, env.record_id, env.model_version)


@dataclasses.dataclass
class ResealReport:
    """What :func:`reseal_all` did.

    Attributes:
        resealed: envelopes re-encrypted under the active key and written back.
        current: envelopes already under the active key, left alone.
        failed: refs of envelopes that could not be opened, with the reason.
    """

    resealed: int = 0
    current: int = 0
    failed: list[tuple[object, str]] = dataclasses.field(default_factory=list)


def reseal_all(
    items: Iterable[tuple[K, str]],
    *,
    keyring: Keyring,
    write: Callable[[K, str], None],
) -> ResealReport:
    """Re-seals stored envelopes under the active key; the hook for a result store.

    A store calls it with its envelopes and a function that writes one back,
    e.g. ``reseal_all(store.iter_sealed(), keyring=ring, write=store.replace_sealed)``.
    An envelope that cannot be opened is recorded in the report and skipped;
    the others carry on, so one bad row never blocks a rotation.

    Args:
        items: ``(ref, envelope_json)`` pairs; ``ref`` is whatever the store
            needs to write the envelope back (a row id, a path).
        keyring: holds the old keys and the active one.
        write: called as ``write(ref, new_envelope_json)`` for each re-sealed one.

    Returns:
        Counts of re-sealed and already-current envelopes, and the failures.
    """
    report = ResealReport()
    active = keyring.active_id
    for ref, text in items:
        try:
            env = Envelope.from_json(text)
            if env.key_id == active:
                report.current += 1
                continue
            new = reseal(env, keyring=keyring)
        except SecurityError as e:
            report.failed.append((ref, str(e)))
            continue
        write(ref, new)
        report.resealed += 1
    return report
