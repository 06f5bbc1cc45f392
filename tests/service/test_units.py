"""In-process checks of the error table, the token verifier and the settings the service adds."""

from __future__ import annotations

import pytest

from atomic_usage.config import Settings
from atomic_usage.errors import (
    AuthError,
    ConfigError,
    EngineError,
    IdempotencyError,
    PayloadError,
    PayloadSyntaxError,
    PayloadTooLarge,
    QueueFullError,
    RecordError,
    StoreError,
    TaskNotFound,
    WorkerCrashed,
)

pytest.importorskip("fastapi")
from atomic_usage.service.auth import TokenVerifier, hash_token  # noqa: E402
from atomic_usage.service.errors import status_of  # noqa: E402

_REC = [RecordError(0, "cpuLoad", "bad")]


class TestErrorTable:
    """Each library error has exactly one HTTP status, and unknown errors are a bare 500."""

    @pytest.mark.parametrize(
        ("exc", "status"),
        [
            (AuthError(), 401),
            (PayloadSyntaxError(_REC), 400),
            (PayloadTooLarge(_REC), 413),
            (PayloadError(_REC), 422),
            (IdempotencyError("k"), 409),
            (TaskNotFound("t"), 404),
            (QueueFullError("full"), 503),
            (WorkerCrashed("dead"), 503),
            (StoreError("disk"), 503),
            (EngineError("late"), 503),
            (ConfigError("x"), 500),
            (RuntimeError("secret detail"), 500),
        ],
    )
    def test_status(self, exc: BaseException, status: int) -> None:
        """The table maps the error to its status, with a detail that never echoes internals."""
        code, detail = status_of(exc)
        assert code == status
        assert "secret" not in detail


class TestTokens:
    """Tokens are kept as hashes and a refusal is the same whatever was wrong."""

    def test_verifier(self, tmp_path) -> None:  # noqa: ANN001
        """Env tokens and file hashes are accepted; anything else raises the same AuthError."""
        f = tmp_path / "tokens"
        f.write_text(hash_token("from-file-token-123456") + "\n")
        v = TokenVerifier.from_settings(Settings(api_tokens=("from-env-token-1234567",), api_tokens_file=f))
        v.check("from-env-token-1234567")
        v.check("from-file-token-123456")
        messages = set()
        for bad in (None, "", "from-env-token-123456", "x" * 1000):
            with pytest.raises(AuthError) as info:
                v.check(bad)
            messages.add(str(info.value))
        assert messages == {"A valid bearer token is required."}

    def test_no_token_refuses_to_start(self) -> None:
        """A service with no token configured is a ConfigError naming ATOMIC_API_TOKENS."""
        with pytest.raises(ConfigError, match="ATOMIC_API_TOKENS"):
            TokenVerifier.from_settings(Settings())

    def test_bad_token_file(self, tmp_path) -> None:  # noqa: ANN001
        """A plain token in the hash file is refused, naming the line."""
        (tmp_path / "t").write_text("plain-token\n")
        with pytest.raises(ConfigError, match="line 1"):
            TokenVerifier.from_settings(Settings(api_tokens_file=tmp_path / "t"))


class TestSettings:
    """The service settings are read from the environment with the ATOMIC_ prefix."""

    def test_from_env(self) -> None:
        """Tokens, limits and the open-metrics switch parse; short tokens are refused."""
        s = Settings.from_env(
            {
                "ATOMIC_API_TOKENS": "a" * 16 + ", " + "b" * 20,
                "ATOMIC_MAX_RECORDS": "7",
                "ATOMIC_MAX_BODY_BYTES": "4096",
                "ATOMIC_OPEN_METRICS": "yes",
            }
        )
        assert s.api_tokens == ("a" * 16, "b" * 20) and s.max_records == 7
        assert s.max_body_bytes == 4096 and s.open_metrics
        assert "a" * 16 not in repr(s)
        with pytest.raises(ConfigError, match="ATOMIC_API_TOKENS"):
            Settings.from_env({"ATOMIC_API_TOKENS": "short"})
