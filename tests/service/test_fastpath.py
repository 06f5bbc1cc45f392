"""The predict fast path answers exactly as the FastAPI route does, and leaves everything unusual to it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from atomic_usage import Settings  # noqa: E402
from atomic_usage.engine.predictor import UsagePredictor  # noqa: E402
from atomic_usage.models.baselines import Naive  # noqa: E402
from atomic_usage.service.app import create_app  # noqa: E402
from atomic_usage.service.fastpath import _query  # noqa: E402

TOKEN = "fast-path-token-0123456789abcdef"
T0 = 1_767_600_000


def _body(*values: float, mid: str = "a") -> bytes:
    return json.dumps(
        {"usageData": [{"id": mid, "timestamp": T0 + 300 * k, "cpuLoad": v} for k, v in enumerate(values)]}
    ).encode()


@pytest.fixture
def predictor(tmp_path: Path) -> Iterator[UsagePredictor]:
    settings = Settings(data_dir=tmp_path / "d", workers=1, api_tokens=(TOKEN,), max_body_bytes=4096, max_records=20)
    with UsagePredictor(settings, model=Naive()) as p:
        yield p


def _send(app: Any, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.request(method, url, content=body, headers=headers)

    return asyncio.run(go())


AUTH = {"Authorization": f"Bearer {TOKEN}"}

CASES: list[tuple[str, str, bytes | None, dict[str, str]]] = [
    ("plain", "/v1/predict", _body(10, 11, 12), {**AUTH, "Idempotency-Key": "k-plain"}),
    ("horizon and sealed", "/v1/predict?horizon=3&sealed=true", _body(5, 6), {**AUTH, "Idempotency-Key": "k-hs"}),
    ("sealed=false", "/v1/predict?sealed=false", _body(7), {**AUTH, "Idempotency-Key": "k-sf"}),
    ("bad json", "/v1/predict", b'{"usageData": [', {**AUTH, "Idempotency-Key": "k-bad"}),
    ("nan literal", "/v1/predict", b'{"usageData": [{"id": "a", "cpuLoad": NaN}]}', AUTH),
    ("empty body", "/v1/predict", b"", AUTH),
    ("bad record", "/v1/predict", _body(500), {**AUTH, "Idempotency-Key": "k-rec"}),
    ("too many bytes", "/v1/predict", b'{"usageData": []}' + b" " * 5000, AUTH),
    ("too many records", "/v1/predict", _body(*range(25)), AUTH),
    ("big integer id", "/v1/predict", b'{"usageData": [{"id": 123456789012345678901234567890, "cpuLoad": 1}]}', AUTH),
    ("text/plain", "/v1/predict", _body(1), {**AUTH, "Content-Type": "text/plain"}),
    ("form", "/v1/predict", _body(1), {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}),
    ("latin-1 charset", "/v1/predict", _body(1), {**AUTH, "Content-Type": "application/json; charset=latin-1"}),
    ("wrong type, too many bytes", "/v1/predict", b" " * 5000, {**AUTH, "Content-Type": "text/plain"}),
    ("wrong type, bad json", "/v1/predict", b"{", {**AUTH, "Content-Type": "text/plain"}),
    (
        "json with charset",
        "/v1/predict",
        _body(8, mid="cs"),
        {**AUTH, "Content-Type": "application/json; charset=utf-8", "Idempotency-Key": "k-cs"},
    ),
    (
        "+json",
        "/v1/predict",
        _body(9, mid="pj"),
        {**AUTH, "Content-Type": "application/vnd.x+json", "Idempotency-Key": "k-pj"},
    ),
    # left to the route:
    ("no token", "/v1/predict", _body(1), {}),
    ("wrong token", "/v1/predict", _body(1), {"Authorization": "Bearer nope"}),
    ("basic scheme", "/v1/predict", _body(1), {"Authorization": f"Basic {TOKEN}"}),
    ("horizon 0", "/v1/predict?horizon=0", _body(1), AUTH),
    ("horizon too far", "/v1/predict?horizon=289", _body(1), AUTH),
    ("sealed spelled 1", "/v1/predict?sealed=1", _body(3, mid="s1"), {**AUTH, "Idempotency-Key": "k-s1"}),
    ("key with a space", "/v1/predict", _body(1), {**AUTH, "Idempotency-Key": "a b"}),
    ("other parameter", "/v1/predict?x=1", _body(4, mid="x"), {**AUTH, "Idempotency-Key": "k-x"}),
]


class TestFastPath:
    """Each request gets the same status and body through the fast path as through the route alone."""

    def test_same_answers_as_the_route(self, predictor: UsagePredictor) -> None:
        """Successes, every error status and every fall-through case: status, type and body agree."""
        fast = create_app(predictor.settings, predictor)
        slow = create_app(predictor.settings, predictor, fast_path=False)
        for name, url, body, headers in CASES:
            a = _send(fast, "POST", url, body, headers)
            b = _send(slow, "POST", url, body, headers)  # with the same key: the retry of a's request
            assert a.status_code == b.status_code, name
            assert a.headers["content-type"] == b.headers["content-type"], name
            assert a.json() == b.json(), name
            assert a.headers.get("accept-post") == b.headers.get("accept-post"), name
            if a.status_code == 200 and "Idempotency-Key" in headers:
                assert a.content == b.content, name  # the retry's body, byte for byte
        conflict = _send(fast, "POST", "/v1/predict", _body(99), {**AUTH, "Idempotency-Key": "k-plain"})
        assert conflict.status_code == 409 and "k-plain" in conflict.json()["detail"]
        assert _send(slow, "POST", "/v1/predict", _body(99), {**AUTH, "Idempotency-Key": "k-plain"}).json() == (
            conflict.json()
        )

    def test_other_endpoints_pass_through(self, predictor: UsagePredictor) -> None:
        """GET /v1/tasks and /healthz are served by FastAPI as before."""
        app = create_app(predictor.settings, predictor)
        r = _send(app, "POST", "/v1/predict", _body(1, 2), {**AUTH, "Idempotency-Key": "t-1"})
        task = _send(app, "GET", f"/v1/tasks/{r.json()['taskId']}", None, AUTH)
        assert task.status_code == 200 and task.json()["results"] == r.json()["results"]
        assert _send(app, "GET", "/healthz", None, AUTH).json() == {"status": "ok"}
        assert _send(app, "GET", "/v1/tasks/nope", None, AUTH).status_code == 404

    def test_latency_labelled_with_the_route(self, predictor: UsagePredictor) -> None:
        """Requests answered by the fast path are counted under route="/v1/predict", as the route's are."""
        app = create_app(predictor.settings, predictor)
        assert _send(app, "POST", "/v1/predict", _body(1, 2, mid="m"), {**AUTH, "Idempotency-Key": "m-1"}).is_success
        assert _send(app, "POST", "/v1/predict", b"{", AUTH).status_code == 400
        text = _send(app, "GET", "/metrics", None, AUTH).text
        labels = [ln for ln in text.splitlines() if ln.startswith("atomic_http_request_duration_seconds_count")]
        assert any('route="/v1/predict"' in ln and 'status="200"' in ln for ln in labels), labels
        assert any('route="/v1/predict"' in ln and 'status="400"' in ln for ln in labels), labels
        assert not any('route="unmatched"' in ln and 'method="POST"' in ln for ln in labels), labels

    @pytest.mark.parametrize(
        ("qs", "expected"),
        [
            (b"", (None, False)),
            (b"horizon=12", (12, False)),
            (b"sealed=true&horizon=288", (288, True)),
            (b"horizon=012", None),
            (b"horizon=12&horizon=3", None),
            (b"horizon", None),
            (b"sealed=True", None),
            (b"horizon=%31", None),
        ],
    )
    def test_query_parsing(self, qs: bytes, expected: tuple[int | None, bool] | None) -> None:
        """Only plainly spelled parameters are read here; anything else goes to the route."""
        assert _query(qs) == expected
