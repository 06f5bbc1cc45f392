"""The security layer: a keyring of AES-256 keys, and results sealed with AES-256-GCM.

Results are sealed into envelopes bound to their task, record and model
version (:func:`seal`), opened with :func:`open_sealed` / :func:`open_result`,
and moved to the newest key with :func:`reseal` after a :meth:`Keyring.rotate`.
See ``docs/security.md`` for the envelope format and the threat model.
"""

from __future__ import annotations

from .keyring import KEY_BYTES, KEYRING_FILENAME, KeyInfo, Keyring, key_id_for, load_or_create_keyring
from .seal import (
    ENVELOPE_VERSION,
    NONCE_BYTES,
    Envelope,
    ResealReport,
    open_result,
    open_sealed,
    reseal,
    reseal_all,
    seal,
    seal_json,
)

__all__ = [
    "ENVELOPE_VERSION",
    "Envelope",
    "KEYRING_FILENAME",
    "KEY_BYTES",
    "KeyInfo",
    "Keyring",
    "NONCE_BYTES",
    "ResealReport",
    "key_id_for",
    "load_or_create_keyring",
    "open_result",
    "open_sealed",
    "reseal",
    "reseal_all",
    "seal",
    "seal_json",
]
