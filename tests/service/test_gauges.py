"""The latest forecasts as Prometheus gauges (exposition checked with generate_latest)."""

from __future__ import annotations

import math

import numpy as np
import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from atomic_usage.engine.forecast import describe_forecast  # noqa: E402
from atomic_usage.service.gauges import ForecastGauges  # noqa: E402

T0 = 1_700_000_000.0  # forecast origin (Unix seconds)


def _result(machine: str, p90: list[float], last: float = 50.0) -> dict:
    """One process() result with a storage forecast of len(p90) 5-minute steps."""
    p90a = np.asarray(p90, float)
    fc = np.stack([p90a - 20, p90a - 10, p90a])
    desc = describe_forecast(
        fc, last_ts=T0, step_s=300, last_value=last, history_length=10, model="m", thresholds=(90, 100)
    )
    return {
        "index": 0,
        "id": machine,
        "timestamp": "2023-11-14T22:13:20Z",
        "forecasts": {"cpuLoad": None, "storageUsage": desc},
    }


def _samples(gauges: ForecastGauges) -> dict[tuple, float]:
    reg = CollectorRegistry()
    reg.register(gauges)
    text = generate_latest(reg).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _key(name: str, **labels: str) -> tuple:
    return (name, tuple(sorted(labels.items())))


class TestForecastGauges:
    """Gauge families built from process() results at scrape time."""

    def test_values_per_quantile_and_step(self) -> None:
        """Every step and quantile becomes one sample labelled instance, metric, quantile, step."""
        g = ForecastGauges(clock=lambda: T0)
        g.update({"results": [_result("h1:9100", [80, 92, 101])]})
        s = _samples(g)
        assert (
            s[
                _key(
                    "atomic_forecast_value",
                    instance="h1:9100",
                    metric="storageUsage",
                    quantile="0.9",
                    step="2",
                )
            ]
            == 92
        )
        assert (
            s[
                _key(
                    "atomic_forecast_value",
                    instance="h1:9100",
                    metric="storageUsage",
                    quantile="0.1",
                    step="1",
                )
            ]
            == 60
        )
        assert len([k for k in s if k[0] == "atomic_forecast_value"]) == 9
        assert s[_key("atomic_forecast_origin_timestamp_seconds", instance="h1:9100", metric="storageUsage")] == T0

    def test_seconds_to_threshold(self) -> None:
        """Seconds count from the scrape to the first step at the level; +Inf when never, 0 when above."""
        now = [T0]
        g = ForecastGauges(clock=lambda: now[0])
        g.update(_result("a", [80, 92, 101]))
        g.update(_result("b", [95, 96, 97], last=99.0))
        s = _samples(g)

        def sec(m: str, th: str, q: str) -> float:
            return s[
                _key(
                    "atomic_forecast_seconds_to_threshold",
                    instance=m,
                    metric="storageUsage",
                    threshold=th,
                    quantile=q,
                )
            ]

        assert sec("a", "90", "0.9") == 600 and sec("a", "100", "0.9") == 900
        assert sec("a", "90", "0.5") == 900 and math.isinf(sec("a", "100", "0.5"))
        assert sec("b", "90", "0.9") == 0 and math.isinf(sec("b", "100", "0.9"))
        now[0] = T0 + 500  # the same forecast, scraped later, counts down
        s = _samples(g)
        assert (
            s[
                _key(
                    "atomic_forecast_seconds_to_threshold",
                    instance="a",
                    metric="storageUsage",
                    threshold="90",
                    quantile="0.9",
                )
            ]
            == 100
        )

    def test_newest_result_replaces_and_forget(self) -> None:
        """A machine keeps only its newest forecast; forget removes it."""
        g = ForecastGauges(clock=lambda: T0, steps=[1])
        g.update(_result("a", [80, 92]))
        g.update(_result("a", [70, 72]))
        s = _samples(g)
        assert s[_key("atomic_forecast_value", instance="a", metric="storageUsage", quantile="0.9", step="1")] == 70
        assert len([k for k in s if k[0] == "atomic_forecast_value"]) == 3
        g.forget("a")
        assert len(g) == 0 and not _samples(g)

    def test_exposition_names_and_types(self) -> None:
        """The text exposition declares the three families as gauges."""
        g = ForecastGauges(clock=lambda: T0)
        g.update(_result("a", [80]))
        reg = CollectorRegistry()
        reg.register(g)
        text = generate_latest(reg).decode()
        for name in (
            "atomic_forecast_value",
            "atomic_forecast_seconds_to_threshold",
            "atomic_forecast_origin_timestamp_seconds",
        ):
            assert f"# TYPE {name} gauge" in text
        assert "+Inf" in text


class TestShortHistory:
    """A forecast whose interval is unknown (too short a history) exports p50 only."""

    def test_null_interval_exports_p50_only(self) -> None:
        """p10/p90 gauges and the p90 time-to-threshold are left out, not faked."""
        fc = np.array([[60.0, 61.0], [60.0, 61.0], [60.0, 61.0]])
        desc = describe_forecast(
            fc, last_ts=T0, step_s=300, last_value=60.0, history_length=1, model="naive", thresholds=(90,)
        )
        assert desc["steps"][0]["p90"] is None
        g = ForecastGauges()
        g.update({"index": 0, "id": "m1", "timestamp": "2023-11-14T22:13:20Z", "forecasts": {"cpuLoad": desc}})
        samples = _samples(g)
        names = {k[0] for k in samples}
        assert "atomic_forecast_value" in names
        assert all(dict(k[1]).get("quantile") != "0.9" for k in samples if k[0] == "atomic_forecast_value")


class TestEncodedResults:
    """Results kept as their JSON text export exactly what the same results as dicts export."""

    def test_update_encoded_equals_update(self) -> None:
        """The same families, whichever form each machine's newest result was given in."""
        import orjson

        results = [_result(f"m{i}", [80.0 + i, 91.0, 95.0], last=50.0 + i) for i in range(4)]
        as_dicts = ForecastGauges(clock=lambda: T0 + 60)
        as_dicts.update({"results": results})
        as_text = ForecastGauges(clock=lambda: T0 + 60)
        as_text.update_encoded((r["id"], orjson.dumps(r)) for r in results[:2])
        as_text.update({"results": results[2:]})
        assert _samples(as_text) == _samples(as_dicts) and len(as_text) == 4
        as_text.update_encoded([("m0", orjson.dumps(results[1] | {"id": "m0"}))])  # newest wins
        assert _samples(as_text) != _samples(as_dicts)
