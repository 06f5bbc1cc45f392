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
    UnsupportedMediaType,
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
            (UnsupportedMediaType(_REC), 415),
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


class TestNotFound:
    """A 404 says what was looked up: a task id, or the request id of GET /v1/tasks?request_id=."""

    def test_request_id_lookup_names_the_request_id(self, tmp_path) -> None:  # noqa: ANN001
        """GET /v1/tasks?request_id= of an unknown key is a 404 naming that request id, not a task id."""
        import asyncio

        httpx = pytest.importorskip("httpx")
        from atomic_usage.engine.predictor import UsagePredictor
        from atomic_usage.models.baselines import Naive
        from atomic_usage.service.app import create_app

        token = "not-found-token-0123456789abcdef"
        settings = Settings(data_dir=tmp_path / "d", workers=1, api_tokens=(token,))
        with UsagePredictor(settings, model=Naive()) as predictor:
            app = create_app(settings, predictor)

            async def go() -> tuple[httpx.Response, httpx.Response]:
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                    auth = {"Authorization": f"Bearer {token}"}
                    by_key = await c.get("/v1/tasks", params={"request_id": "batch-42"}, headers=auth)
                    by_id = await c.get("/v1/tasks/abc123", headers=auth)
                    return by_key, by_id

            by_key, by_id = asyncio.run(go())
        assert by_key.status_code == 404 and by_id.status_code == 404
        assert "request id 'batch-42'" in by_key.json()["detail"] and "has the id" not in by_key.json()["detail"]
        assert "No task has the id 'abc123'" in by_id.json()["detail"]
