"""The service against a real uvicorn server on loopback: auth, errors, idempotency, sealing, metrics, TLS."""

from __future__ import annotations

import json
import re
import ssl
from pathlib import Path

import httpx
import pytest

from ._server import AUTH, TOKEN, Server, payload


def _tasks_done(c: httpx.Client) -> float:
    for line in c.get("/metrics", headers=AUTH).text.splitlines():
        if line.startswith('atomic_tasks{status="done"}'):
            return float(line.split()[-1])
    raise AssertionError("atomic_tasks is missing from /metrics")


def _tasks_total(c: httpx.Client) -> float:
    return sum(
        float(ln.split()[-1])
        for ln in c.get("/metrics", headers=AUTH).text.splitlines()
        if ln.startswith("atomic_tasks{")
    )


def _metric(c: httpx.Client, name: str) -> float:
    for line in c.get("/metrics", headers=AUTH).text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.split()[-1])
    raise AssertionError(f"{name} is missing from /metrics")


class TestAuth:
    """Every endpoint wants a configured bearer token, and a refusal tells nothing else."""

    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Authorization": "Bearer wrong-token-of-some-length"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": "Bearer"},
            {"Authorization": f"Bearer {TOKEN}x"},
        ],
    )
    def test_missing_or_wrong_token_is_401(self, server: Server, headers: dict[str, str]) -> None:
        """No token, a wrong one, another scheme or a longer one all get the same bare 401."""
        with server.client() as c:
            for method, path in (
                ("POST", "/v1/predict"),
                ("GET", "/v1/tasks/abc"),
                ("GET", "/metrics"),
                ("GET", "/healthz"),
                ("GET", "/readyz"),
                ("GET", "/v1/tasks?request_id=a"),
            ):
                r = c.request(method, path, headers=headers, json=payload(1))
                assert r.status_code == 401, (method, path)
                assert r.json() == {"detail": "A valid bearer token is required.", "errors": []}
                assert r.headers["www-authenticate"] == "Bearer"

    def test_refused_request_applies_nothing(self, server: Server) -> None:
        """A predict without a token stores no task."""
        with server.client() as c:
            before = _tasks_total(c)
            assert c.post("/v1/predict", json=payload(3)).status_code == 401
            assert _tasks_total(c) == before

    @pytest.mark.parametrize(("steps", "exported"), [("none", set()), ("12,1", {"1", "12"})])
    def test_gauge_steps_setting(self, tmp_path: Path, steps: str, exported: set[str]) -> None:
        """ATOMIC_GAUGE_STEPS picks the forecast steps exported per machine (none: no value gauges,
        the time-to-threshold gauges still there), so a large fleet's scrape stays small."""
        with Server(tmp_path, env={"ATOMIC_GAUGE_STEPS": steps}) as srv, srv.client() as c:
            mid = c.post("/v1/predict", json=payload(2), headers=AUTH).json()["results"][0]["id"]
            lines = [ln for ln in c.get("/metrics", headers=AUTH).text.splitlines() if f'instance="{mid}"' in ln]
        got = {re.search(r'step="(\d+)"', ln).group(1) for ln in lines if ln.startswith("atomic_forecast_value{")}  # type: ignore[union-attr]
        assert got == exported
        assert any(ln.startswith("atomic_forecast_seconds_to_threshold{") for ln in lines)

    def test_open_metrics_setting(self, tmp_path: Path) -> None:
        """ATOMIC_OPEN_METRICS=1 opens /metrics and health, and only them."""
        with Server(tmp_path, env={"ATOMIC_OPEN_METRICS": "1"}) as srv, srv.client() as c:
            assert c.get("/metrics").status_code == 200
            assert c.get("/healthz").json() == {"status": "ok"}
            assert c.get("/readyz").json()["status"] == "ready"
            assert c.post("/v1/predict", json=payload(1)).status_code == 401

    def test_open_health_setting(self, tmp_path: Path) -> None:
        """ATOMIC_OPEN_HEALTH=1 opens /healthz and /readyz for probes, and not /metrics."""
        with Server(tmp_path, env={"ATOMIC_OPEN_HEALTH": "1"}) as srv, srv.client() as c:
            assert c.get("/healthz").json() == {"status": "ok"}
            assert c.get("/readyz").json()["status"] == "ready"
            assert c.get("/metrics").status_code == 401
            assert c.get("/metrics", headers=AUTH).status_code == 200
            assert c.post("/v1/predict", json=payload(1)).status_code == 401

    def test_hashed_token_file(self, tmp_path: Path) -> None:
        """A token listed only by its hash in ATOMIC_API_TOKENS_FILE is accepted."""
        from atomic_usage.service.auth import hash_token

        other = "file-token-" + "y" * 24
        (tmp_path / "tokens").write_text(f"# ops\n{hash_token(other)}\n")
        with (
            Server(tmp_path, env={"ATOMIC_API_TOKENS_FILE": str(tmp_path / "tokens")}) as srv,
            srv.client() as c,
        ):
            assert c.get("/healthz", headers={"Authorization": f"Bearer {other}"}).status_code == 200
            assert c.get("/healthz", headers=AUTH).status_code == 200


class TestPredict:
    """POST /v1/predict runs process() and GET /v1/tasks returns what it stored."""

    def test_predict_then_task(self, server: Server) -> None:
        """A 200 names its task, and the task holds the same results."""
        with server.client() as c:
            r = c.post("/v1/predict", json=payload(10), headers=AUTH, params={"horizon": 6})
            assert r.status_code == 200
            body = r.json()
            assert len(body["results"]) == 10 and "sealed" not in body
            assert len(body["results"][0]["forecasts"]["cpuLoad"]["steps"]) == 6
            task = c.get(f"/v1/tasks/{body['taskId']}", headers=AUTH).json()
            assert task["status"] == "done" and task["results"] == body["results"]
            found = c.get("/v1/tasks", params={"request_id": body["requestId"]}, headers=AUTH).json()
            assert found["task_id"] == body["taskId"]

    def test_idempotent_retry(self, server: Server) -> None:
        """A retry with the same Idempotency-Key gets the same result and creates no task."""
        with server.client() as c:
            h = {**AUTH, "Idempotency-Key": "retry-1"}
            first = c.post("/v1/predict", json=payload(4, seed=1), headers=h)
            done = _tasks_done(c)
            again = c.post("/v1/predict", json=payload(4, seed=1), headers=h)
            assert first.status_code == again.status_code == 200
            assert again.json() == first.json() and first.json()["requestId"] == "retry-1"
            assert _tasks_done(c) == done

    @pytest.mark.parametrize("params", [{}, {"sealed": "1"}])  # the fast path, and the route
    def test_replay_is_not_counted_as_records(self, server: Server, params: dict[str, str]) -> None:
        """A retry answered with the stored result adds to atomic_replays_total, not atomic_records_total."""
        with server.client() as c:
            h = {**AUTH, "Idempotency-Key": f"replay-{len(params)}"}
            assert c.post("/v1/predict", json=payload(3, seed=5), headers=h, params=params).status_code == 200
            records, replays = _metric(c, "atomic_records_total"), _metric(c, "atomic_replays_total")
            for _ in range(2):
                assert c.post("/v1/predict", json=payload(3, seed=5), headers=h, params=params).status_code == 200
            assert _metric(c, "atomic_records_total") == records
            assert _metric(c, "atomic_replays_total") == replays + 2

    def test_sealed_on_request(self, server: Server) -> None:
        """?sealed=true adds one AES-256-GCM envelope per record, which opens to the result."""
        from atomic_usage.config import Settings
        from atomic_usage.security import load_or_create_keyring, open_result

        with server.client() as c:
            body = c.post("/v1/predict", json=payload(2), headers=AUTH, params={"sealed": "true"}).json()
        assert len(body["sealed"]) == 2
        ring, _ = load_or_create_keyring(Settings(data_dir=server.data_dir))
        for i, env in enumerate(body["sealed"]):
            assert "ciphertext" in json.loads(env) or env  # compact JSON text
            assert open_result(env.encode(), keyring=ring, task_id=body["taskId"]) == body["results"][i]

    def test_metrics_exposition(self, server: Server) -> None:
        """/metrics is Prometheus text with the engine's figures and the HTTP latency histogram."""
        with server.client() as c:
            c.post("/v1/predict", json=payload(1), headers=AUTH)
            r = c.get("/metrics", headers=AUTH)
        assert r.headers["content-type"].startswith("text/plain")
        for name in (
            'atomic_records_per_second{window="60s"}',
            "atomic_records_total",
            "atomic_replays_total",
            "atomic_queue_depth",
            "atomic_workers_alive 1.0",
            "atomic_worker_restarts_total",
            "atomic_recovered_tasks_total",
            'atomic_process_latency_seconds{quantile="0.99"}',
            'atomic_model_info{name="naive"',
            "atomic_http_request_duration_seconds_bucket",
            "atomic_batch_size_bucket",
        ):
            assert name in r.text, name

    def test_forecast_gauges_after_predict(self, server: Server) -> None:
        """A predicted machine's forecast and time-to-threshold appear as gauges in the scrape."""
        with server.client() as c:
            body = c.post("/v1/predict", json=payload(2), headers=AUTH).json()
            text = c.get("/metrics", headers=AUTH).text
        mid = body["results"][0]["id"]
        value = [
            ln
            for ln in text.splitlines()
            if ln.startswith("atomic_forecast_value{")
            and f'instance="{mid}"' in ln
            and 'quantile="0.5"' in ln
            and 'step="1"' in ln
        ]
        assert value, "no atomic_forecast_value gauge for the predicted machine"
        assert any(
            ln.startswith("atomic_forecast_seconds_to_threshold{") and f'instance="{mid}"' in ln
            for ln in text.splitlines()
        )

    @pytest.mark.parametrize("params", [{}, {"sealed": "1"}])  # the fast path, and the route
    def test_replay_leaves_the_newer_gauges(self, server: Server, params: dict[str, str]) -> None:
        """A replay of an older request does not put its older forecast back into the gauges."""
        mid = f"gauge-r{len(params)}"

        def send(key: str, minute: int, cpu: float) -> None:
            rec = {"id": mid, "timestamp": f"2026-01-05T08:{minute:02d}:00Z", "cpuLoad": cpu}
            h = {**AUTH, "Idempotency-Key": f"{mid}-{key}"}
            assert c.post("/v1/predict", json={"usageData": [rec]}, headers=h, params=params).status_code == 200

        name = f'atomic_forecast_value{{instance="{mid}",metric="cpuLoad",quantile="0.5",step="1"}}'
        with server.client() as c:
            send("gauge-old", 0, 10.0)
            send("gauge-new", 5, 90.0)
            assert _metric(c, name) == 90.0  # the naive model: the last value
            send("gauge-old", 0, 10.0)
            assert _metric(c, name) == 90.0


class TestErrors:
    """Bad input gets a 4xx with the per-record error list, and nothing is applied."""

    @pytest.mark.parametrize(
        ("body", "status", "field"),
        [
            (b'{"usageData": [', 400, "body"),
            (b"", 400, "body"),
            (b"\xff\xfe", 400, "body"),
            (b'{"usageData": [{"id": "a", "cpuLoad": NaN}]}', 400, "body"),
            # lone UTF-16 surrogate escapes parse but are no text: they answered 500 once
            (b'{"usageData": [{"id": "\\ud800", "cpuLoad": 1}]}', 400, "body"),
            (b'{"usageData": [{"id": "\\ud800", "cpuLoad": "x"}]}', 400, "body"),
            (b'{"usageData": [{"id": "a", "cpuLoad": 1, "\\ud800": 5}]}', 400, "body"),
            (b"[" * 100_000, 413, "body"),
            (json.dumps(payload(51)).encode(), 413, "usageData"),
            (b'{"usageData": [{"id": "a", "cpuLoad": "30"}]}', 422, "cpuLoad"),
            (b'{"usageData": [{"id": "a", "cpuLoad": 130}]}', 422, "cpuLoad"),
            (b'{"usageData": []}', 422, "usageData"),
            (b'{"usageData": [{"id": "a", "cpuLoad": 3, "gpu": 1}]}', 422, "gpu"),
            (b"[1, 2]", 422, "payload"),
        ],
    )
    def test_bad_body(self, server: Server, body: bytes, status: int, field: str) -> None:
        """Malformed JSON 400, too big 413, bad records 422; no task is stored."""
        with server.client() as c:
            before = _tasks_total(c)
            r = c.post("/v1/predict", content=body, headers={**AUTH, "Content-Type": "application/json"})
            assert r.status_code == status, r.text
            assert field in {e["field"] for e in r.json()["errors"]}
            assert set(r.json()["errors"][0]) == {"index", "id", "field", "message"}
            assert _tasks_total(c) == before

    def test_same_list_as_process(self, server: Server) -> None:
        """The 422 lists exactly the errors process() raises, every bad record at once."""
        from atomic_usage.engine.payload import parse_payload
        from atomic_usage.errors import PayloadError

        bad = {"usageData": [{"id": "a", "cpuLoad": -1}, {"cpuLoad": 3}, {"id": "b", "memoryUsage": True}]}
        with pytest.raises(PayloadError) as info:
            parse_payload(bad)
        with server.client() as c:
            r = c.post("/v1/predict", json=bad, headers=AUTH)
        assert r.status_code == 422
        assert r.json()["errors"] == [e.as_dict() for e in info.value.errors]

    @pytest.mark.parametrize(
        ("rid", "what"),
        [
            ("nul\x00id", "control character"),
            ("esc\x1b[2Jid", "control character"),
            ("line\nid", "control character"),
            ("del\x7fid", "control character"),
            ("c1\x85id", "control character"),
            ("ls\u2028id", "line or paragraph separator"),
            ("rlo\u202eid", "bidirectional control"),
            ("fsi\u2068id", "bidirectional control"),
        ],
    )
    def test_control_character_in_id(self, server: Server, rid: str, what: str) -> None:
        """An id holding a control or other invisible character is a 422 naming record 1's id,
        given escaped as process() gives it; nothing is stored or exported."""
        from atomic_usage.engine.payload import parse_payload
        from atomic_usage.errors import PayloadError

        body = {"usageData": [{"id": "ctl-ok", "cpuLoad": 5}, {"id": rid, "cpuLoad": 5}]}
        with pytest.raises(PayloadError) as info:
            parse_payload(body)
        with server.client() as c:
            before = _tasks_total(c)
            r = c.post("/v1/predict", json=body, headers=AUTH)
            assert r.status_code == 422, r.text
            errors = r.json()["errors"]
            escaped = rid.encode("unicode_escape").decode("ascii")
            assert [(e["index"], e["id"], e["field"]) for e in errors] == [(1, escaped, "id")]
            assert errors == [e.as_dict() for e in info.value.errors]
            assert what in errors[0]["message"] and escaped in errors[0]["message"]
            assert _tasks_total(c) == before
            text = c.get("/metrics", headers=AUTH).text
        assert "ctl-ok" not in text and rid not in text and "\x00" not in text

    @pytest.mark.parametrize("params", [{}, {"sealed": "1"}])  # the fast path, and the route
    @pytest.mark.parametrize(
        ("content_type", "hint"),
        [
            ("text/plain", False),
            ("application/x-www-form-urlencoded", True),  # what curl -d sends
            ("Application/X-WWW-Form-Urlencoded; charset=utf-8", True),
            ("multipart/form-data; boundary=x", False),
            ("application/xml", False),
            ("application/jsonl", False),
            ("application/octet-stream", False),
            ("json", False),
            ("", False),
            ("application/json; charset=iso-8859-1", False),
        ],
    )
    def test_wrong_content_type_is_415(
        self, server: Server, content_type: str, hint: bool, params: dict[str, str]
    ) -> None:
        """A valid JSON body declared as something else is a 415 naming Content-Type; nothing is
        stored. The message mentions curl -d (which sends form-encoded bodies) only for those."""
        with server.client() as c:
            before = _tasks_total(c)
            r = c.post(
                "/v1/predict",
                content=json.dumps(payload(2)).encode(),
                headers={**AUTH, "Content-Type": content_type},
                params=params,
            )
            assert r.status_code == 415, r.text
            body = r.json()
            assert body["detail"].startswith("The request body must be JSON")
            assert [(e["index"], e["id"], e["field"]) for e in body["errors"]] == [(-1, None, "Content-Type")]
            message = body["errors"][0]["message"]
            assert "with Content-Type: application/json" in message
            assert ("curl -d" in message) is hint, message
            assert r.headers["accept-post"] == "application/json, application/*+json"
            assert _tasks_total(c) == before

    @pytest.mark.parametrize("params", [{}, {"sealed": "1"}])
    @pytest.mark.parametrize(
        "content_type",
        [
            "application/json",
            "application/json; charset=utf-8",
            'Application/JSON;charset="UTF-8"',
            "application/vnd.atomic+json",
            "application/merge-patch+json; charset=utf-8",
            None,  # nothing declared: the body is read as JSON, as before
        ],
    )
    def test_json_content_types_are_served(
        self, server: Server, content_type: str | None, params: dict[str, str]
    ) -> None:
        """application/json (with or without charset=utf-8), application/*+json, or no Content-Type at all."""
        headers = AUTH if content_type is None else {**AUTH, "Content-Type": content_type}
        with server.client() as c:
            r = c.post("/v1/predict", content=json.dumps(payload(2)).encode(), headers=headers, params=params)
        assert r.status_code == 200, r.text

    def test_content_type_twice_is_415(self, server: Server) -> None:
        """Two Content-Type headers (even two JSON ones) are a 415: which one holds is anyone's guess."""
        with server.client() as c:
            r = c.post(
                "/v1/predict",
                content=json.dumps(payload(1)).encode(),
                headers=[*AUTH.items(), ("Content-Type", "application/json"), ("Content-Type", "text/plain")],
            )
        assert r.status_code == 415 and r.json()["errors"][0]["field"] == "Content-Type"

    def test_openapi_lists_415(self, server: Server) -> None:
        """The OpenAPI document of POST /v1/predict lists the 415 with the error body."""
        with server.client() as c:
            doc = c.get("/openapi.json", headers=AUTH).json()
        answer = doc["paths"]["/v1/predict"]["post"]["responses"]["415"]
        assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}

    def test_chunked_oversized_body(self, server: Server) -> None:
        """A body with no Content-Length is cut off at the limit with 413."""

        def gen():  # noqa: ANN202
            for _ in range(50):
                yield b" " * 1000

        with server.client() as c:
            r = c.post("/v1/predict", content=gen(), headers=AUTH)
        assert r.status_code == 413

    def test_reused_key_other_payload_is_409(self, server: Server) -> None:
        """An Idempotency-Key reused with a different payload is a 409."""
        with server.client() as c:
            h = {**AUTH, "Idempotency-Key": "conflict-1"}
            assert c.post("/v1/predict", json=payload(1, seed=1), headers=h).status_code == 200
            r = c.post("/v1/predict", json=payload(1, seed=2), headers=h)
        assert r.status_code == 409 and "conflict-1" in r.json()["detail"]

    def test_unknown_task_is_404(self, server: Server) -> None:
        """Unknown task ids and request ids are 404."""
        with server.client() as c:
            assert c.get("/v1/tasks/0123abc", headers=AUTH).status_code == 404
            assert c.get("/v1/tasks", params={"request_id": "never"}, headers=AUTH).status_code == 404

    @pytest.mark.parametrize(
        ("params", "headers"),
        [
            ({"horizon": 0}, {}),
            ({"horizon": "x"}, {}),
            ({"sealed": "maybe"}, {}),
            ({}, {"Idempotency-Key": "a b"}),
            ({}, {"Idempotency-Key": "k" * 201}),
        ],
    )
    def test_bad_parameters_are_422(self, server: Server, params: dict[str, object], headers: dict[str, str]) -> None:
        """Out-of-range query parameters and headers are 422 in the same error shape."""
        with server.client() as c:
            r = c.post("/v1/predict", json=payload(1), params=params, headers={**AUTH, **headers})
        assert r.status_code == 422
        assert r.json()["errors"][0]["index"] == -1


class TestTls:
    """--tls-cert/--tls-key serve HTTPS with a certificate made in the test."""

    def test_https(self, tmp_path: Path, tls_files: tuple[Path, Path, Path]) -> None:
        """A client trusting the test CA gets a 200; one trusting nothing fails the handshake."""
        with Server(tmp_path, tls=tls_files) as srv:
            with srv.client() as c:
                r = c.post("/v1/predict", json=payload(2), headers=AUTH)
                assert r.status_code == 200 and r.url.scheme == "https"
            with pytest.raises(httpx.ConnectError), httpx.Client(verify=ssl.create_default_context()) as c:
                c.get(f"{srv.url}/healthz", headers=AUTH)
            with pytest.raises(httpx.TransportError), httpx.Client() as c:
                c.get(f"http://127.0.0.1:{srv.port}/healthz", headers=AUTH, timeout=5)

    @pytest.mark.parametrize("which", ["missing cert", "missing key", "cert as key", "another key", "a folder"])
    def test_bad_files_exit_2_naming_them(
        self, tmp_path: Path, tls_files: tuple[Path, Path, Path], which: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A missing, mismatched or unreadable certificate or key is a one-line exit 2 naming the file
        and the option, before anything starts (it was a 55-line traceback from uvicorn, exit 1)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from typer.testing import CliRunner

        from atomic_usage.cli import app

        cert, key, _ = tls_files
        other = tmp_path / "other.key"
        other.write_bytes(
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        cert_arg, key_arg, named = {
            "missing cert": (tmp_path / "nope.pem", key, "nope.pem"),
            "missing key": (cert, tmp_path / "nope.key", "nope.key"),
            "cert as key": (cert, cert, cert.name),
            "another key": (cert, other, "other.key"),
            "a folder": (cert, tmp_path, str(tmp_path)),
        }[which]
        monkeypatch.setenv("ATOMIC_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("ATOMIC_API_TOKENS", AUTH["Authorization"].removeprefix("Bearer "))
        res = CliRunner().invoke(
            app, ["serve", "--port", "0", "--tls-cert", str(cert_arg), "--tls-key", str(key_arg)], terminal_width=400
        )
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output and named in res.output and "--tls-" in res.output
        assert not (tmp_path / "data").exists(), "nothing is created for a server that cannot start"


class TestBundledModel:
    """The bundled ONNX model serves through the HTTP layer."""

    def test_bundled_model(self, tmp_path: Path) -> None:
        """A predict with the bundled model names it in the response and in /metrics."""
        from atomic_usage.models.artifact import load_model

        version = str(load_model(None).card.version)
        with Server(tmp_path, model=None) as srv, srv.client() as c:
            body = c.post("/v1/predict", json=payload(3), headers=AUTH).json()
            assert body["model"]["version"] == version
            assert f'version="{version}"' in c.get("/metrics", headers=AUTH).text


class TestCasePayloads:
    """The JSON cases of ../shared/cases through POST /v1/predict behave as through process()."""

    @pytest.mark.shared
    def test_c18_strings_and_nan(self, server: Server, shared_dir: Path) -> None:
        """C18: a 422 naming vm-1.cpuLoad and vm-3.cpuLoad (and the strict "45.2"), nothing stored."""
        body = json.loads((shared_dir / "cases" / "C18.json").read_text())
        with server.client() as c:
            before = _tasks_total(c)
            r = c.post("/v1/predict", json=body, headers=AUTH)
            after = _tasks_total(c)
        assert r.status_code == 422
        named = {(e["id"], e["field"]) for e in r.json()["errors"]}
        assert {("vm-1", "cpuLoad"), ("vm-3", "cpuLoad"), ("vm-2", "memoryUsage")} <= named
        assert all(e["id"] != "vm-4" for e in r.json()["errors"]) and after == before
