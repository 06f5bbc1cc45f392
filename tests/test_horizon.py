"""One horizon limit (config.MAX_HORIZON), with one message, in every place a horizon is asked for."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from atomic_usage.cli import app
from atomic_usage.config import MAX_HORIZON, Settings, validate_horizon
from atomic_usage.data import generate_series, regularize
from atomic_usage.engine.predictor import UsagePredictor
from atomic_usage.errors import ConfigError, PayloadError, SchemaError
from atomic_usage.models.base import forecast_frame
from atomic_usage.models.baselines import Naive

runner = CliRunner()
MESSAGE = validate_horizon(MAX_HORIZON + 1)
TOKEN = "horizon-token-0123456789abcdef"


def _flat(text: str) -> str:
    """Console output with rich's box drawing and line breaks taken out."""
    return " ".join(text.replace("│", " ").split())


@pytest.fixture
def predictor(tmp_path: Path) -> Iterator[UsagePredictor]:
    settings = Settings(data_dir=tmp_path / "d", workers=1, api_tokens=(TOKEN,))
    with UsagePredictor(settings, model=Naive()) as p:
        yield p


class TestTheLimit:
    """The limit is a day of 5-minute steps, and the message says so."""

    def test_value_and_message(self) -> None:
        """288 steps are allowed, 0 and 289 are not, and the message names the range and the value."""
        assert MAX_HORIZON == 288
        assert validate_horizon(1) is None and validate_horizon(MAX_HORIZON) is None
        assert MESSAGE == "must be a whole number of steps from 1 to 288 (a day of 5-minute steps), not 289"
        assert validate_horizon(0) is not None and validate_horizon(True) is not None
        assert validate_horizon(12.0) is not None and validate_horizon("12") is not None

    def test_numpy_integers_count(self) -> None:
        """A numpy integer is a whole number too."""
        np = pytest.importorskip("numpy")
        assert validate_horizon(np.int64(12)) is None and validate_horizon(np.int64(289)) == MESSAGE


class TestEverywhere:
    """process(), the setting, the file forecast, the CLI and the service refuse the same values alike."""

    def test_process(self, predictor: UsagePredictor) -> None:
        """process() lists the horizon in its PayloadError; at the limit it forecasts every step."""
        payload = {"usageData": [{"id": "a", "cpuLoad": 5.0}]}
        with pytest.raises(PayloadError) as info:
            predictor.process(payload, horizon=MAX_HORIZON + 1)
        assert [(e.index, e.field, e.message) for e in info.value.errors] == [(-1, "horizon", MESSAGE)]
        with pytest.raises(PayloadError, match="from 1 to 288"):
            predictor.process(payload, horizon=2016)  # what process() used to allow
        out = predictor.process(payload, horizon=MAX_HORIZON)
        assert len(out["results"][0]["forecasts"]["cpuLoad"]["steps"]) == MAX_HORIZON

    @pytest.mark.parametrize("raw", ["289", "0", "-3", "abc", "1.5", ""])
    def test_setting(self, raw: str) -> None:
        """ATOMIC_HORIZON past the limit, below it or not a whole number is a ConfigError naming the
        variable, in the words of every other horizon (0 and words had messages of their own)."""
        assert Settings.from_env({"ATOMIC_HORIZON": "288"}).horizon == 288
        with pytest.raises(
            ConfigError, match=rf"ATOMIC_HORIZON='{re.escape(raw)}' must be a whole number of steps from 1 to 288"
        ):
            Settings.from_env({"ATOMIC_HORIZON": raw})

    def test_forecast_frame(self) -> None:
        """The library's file forecast refuses it with the same words."""
        panel, _ = regularize(generate_series(1, n_steps=20, seed=1))
        with pytest.raises(SchemaError, match="The horizon must be a whole number of steps from 1 to 288"):
            forecast_frame(Naive(), panel, MAX_HORIZON + 1)

    @pytest.mark.parametrize("value", ["289", "0", "abc", "1.5"])
    @pytest.mark.parametrize("command", ["forecast", "report"])
    def test_cli_flag(self, tmp_path: Path, command: str, value: str) -> None:
        """The CLI exits 2 naming --horizon and the limit, before it reads any input. ``--horizon abc``
        said "Input should be a valid integer, unable to parse string as an integer" instead."""
        res = runner.invoke(
            app,
            [command, "--input", str(tmp_path / "absent.csv"), "--horizon", value, "--output", str(tmp_path / "o")],
        )
        assert res.exit_code == 2
        message = validate_horizon(int(value) if value.isdigit() else value)
        assert message is not None and message.startswith("must be a whole number of steps from 1 to 288")
        assert f"Invalid value for '--horizon' / '-H': {message}" in _flat(res.output)

    def test_cli_at_the_limit(self, tmp_path: Path) -> None:
        """--horizon 288 forecasts 288 steps."""
        inp = tmp_path / "in.csv"
        generate_series(1, n_steps=40, seed=2).to_csv(inp, index=False)
        out = tmp_path / "out.csv"
        res = runner.invoke(app, ["forecast", "-i", str(inp), "-H", "288", "-o", str(out), "-m", "naive"])
        assert res.exit_code == 0, res.output
        assert len(out.read_text().splitlines()) == 1 + 3 * 288

    @pytest.mark.parametrize("value", ["289", "0", "abc", "1.5"])
    def test_service(self, predictor: UsagePredictor, value: str) -> None:
        """POST /v1/predict answers 422 with the horizon's error in the per-record list, nothing stored.

        The detail names the query parameter with the same message: ``?horizon=289`` said "The payload
        has bad records; nothing from it was applied." though the records were fine, and ``?horizon=abc``
        said something else again ("A query parameter or header is out of range.")."""
        pytest.importorskip("fastapi")
        httpx = pytest.importorskip("httpx")
        from atomic_usage.service.app import create_app

        body = b'{"usageData": [{"id": "a", "cpuLoad": 5}]}'
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for fast in (True, False):
            application = create_app(predictor.settings, predictor, fast_path=fast)

            async def go(application: Any = application) -> Any:
                transport = httpx.ASGITransport(app=application)
                async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                    r = await c.post(f"/v1/predict?horizon={value}", content=body, headers=auth)
                    doc = await c.get("/openapi.json", headers=auth)
                    return r, doc

            r, doc = asyncio.run(go())
            assert r.status_code == 422, r.text
            message = validate_horizon(int(value) if value.isdigit() else value)
            assert message is not None and message.endswith(f"not {int(value) if value.isdigit() else value!r}")
            assert r.json()["errors"] == [{"index": -1, "id": None, "field": "horizon", "message": message}]
            assert r.json()["detail"] == f"The query parameter horizon is invalid: it {message}; nothing was applied."
            params = doc.json()["paths"]["/v1/predict"]["post"]["parameters"]
            (horizon,) = [p for p in params if p["name"] == "horizon"]
            assert (horizon["schema"]["minimum"], horizon["schema"]["maximum"]) == (1, MAX_HORIZON)
        assert predictor.stats()["tasks"].get("done", 0) == 0
