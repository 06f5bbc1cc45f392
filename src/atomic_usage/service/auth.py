"""Bearer-token authentication: tokens held only as SHA-256 hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

from ..config import Settings
from ..errors import AuthError, ConfigError

__all__ = ["TokenVerifier", "hash_token"]

_PREFIX = "sha256:"


def hash_token(token: str) -> str:
    """The form a token is stored in on disk: ``sha256:<64 hex digits>``.

    >>> hash_token("correct horse battery staple")[:14]
    'sha256:c4bbcb1'
    """
    return _PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


def _read_hashes(path: Path) -> list[bytes]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(
            f"ATOMIC_API_TOKENS_FILE={str(path)!r} cannot be read ({exc.strerror}); check the path.",
            name="ATOMIC_API_TOKENS_FILE",
        ) from None
    out = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest = line.removeprefix(_PREFIX)
        if not line.startswith(_PREFIX) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(
                f"ATOMIC_API_TOKENS_FILE={str(path)!r} line {n} is not 'sha256:<64 lowercase hex>'; "
                "write hashes made with `atomic-usage token-hash`, never the tokens themselves.",
                name="ATOMIC_API_TOKENS_FILE",
            )
        out.append(bytes.fromhex(digest))
    return out


class TokenVerifier:
    """Checks bearer tokens against a set of SHA-256 hashes.

    The presented token is hashed, then compared with every stored hash by
    :func:`hmac.compare_digest` without stopping at a match, so the time taken
    says nothing about which token, or how much of one, was right.

    Args:
        hashes: the SHA-256 digests (32 bytes each) of the accepted tokens.

    Raises:
        ConfigError: no token is configured (the service refuses to run open).
    """

    def __init__(self, hashes: Iterable[bytes]) -> None:
        self._hashes = tuple(hashes)
        if not self._hashes:
            raise ConfigError(
                "No API token is configured; set ATOMIC_API_TOKENS (comma-separated) or "
                "ATOMIC_API_TOKENS_FILE (hashes) before starting the service.",
                name="ATOMIC_API_TOKENS",
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        """The verifier for ``ATOMIC_API_TOKENS`` plus the hashes in ``ATOMIC_API_TOKENS_FILE``."""
        hashes = [hashlib.sha256(t.encode("utf-8")).digest() for t in settings.api_tokens]
        if settings.api_tokens_file is not None:
            hashes += _read_hashes(settings.api_tokens_file)
        return cls(hashes)

    def __len__(self) -> int:
        return len(self._hashes)

    def check(self, token: str | None) -> None:
        """Returns if ``token`` is accepted.

        Raises:
            AuthError: no token, or one that is not accepted (the message is the same).
        """
        presented = hashlib.sha256((token or "").encode("utf-8", "surrogatepass")).digest()
        ok = False
        for h in self._hashes:
            ok |= hmac.compare_digest(presented, h)
        if not token or not ok:
            raise AuthError()
