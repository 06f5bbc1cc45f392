"""describe_many: the per-metric results of many series at once, each equal to describe_forecast of it."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from atomic_usage.engine.forecast import describe_forecast, describe_many, encode_many


class TestDescribeMany:
    """One vectorised pass gives, series by series, what describe_forecast gives."""

    def test_equals_describe_forecast_row_by_row(self) -> None:
        """Random paths, origins, history lengths and gappy recent windows: every row is identical."""
        rng = np.random.default_rng(7)
        R, H = 200, 12
        p50 = np.clip(rng.uniform(0, 100, (R, 1)) + np.cumsum(rng.normal(0, 3, (R, H)), 1), 0, 100)
        width = np.abs(rng.normal(0, 4, (R, H)))
        fc = np.stack([np.clip(p50 - width, 0, 100), p50, np.clip(p50 + width, 0, 100)], 1)
        fc[::9] = 95.0  # flat rows at or past a threshold
        last_ts = 1.7e9 + 300 * rng.integers(0, 3, R)
        last_value = np.where(rng.random(R) < 0.2, 100.0, p50[:, 0] + rng.normal(0, 2, R))
        hist_len = rng.integers(0, 6, R)
        recent = rng.uniform(0, 100, (R, 12))
        recent[rng.random((R, 12)) < 0.4] = np.nan
        recent[::5, :11] = np.nan  # a single observed value: the trend comes from the forecast
        models = [f"m{i % 3}" for i in range(R)]
        many = describe_many(
            fc,
            last_ts=last_ts,
            step_s=300.0,
            last_value=last_value,
            history_length=hist_len,
            models=models,
            thresholds=(90.0, 100.0),
            recent=recent,
        )
        for i in range(R):
            one = describe_forecast(
                fc[i],
                last_ts=float(last_ts[i]),
                step_s=300.0,
                last_value=float(last_value[i]),
                history_length=int(hist_len[i]),
                model=models[i],
                thresholds=(90.0, 100.0),
                recent=recent[i],
            )
            assert many[i] == one

    def test_no_rows(self) -> None:
        """Nothing in, nothing out."""
        empty = np.zeros(0)
        out = describe_many(
            np.zeros((0, 3, 12)),
            last_ts=empty,
            step_s=300.0,
            last_value=empty,
            history_length=empty,
            models=[],
            thresholds=(90.0,),
        )
        assert out == []


class TestEncodeMany:
    """encode_many is describe_many's dicts as orjson would write them, byte for byte."""

    def test_bytes_equal_orjson_of_describe_many(self) -> None:
        """Random paths (counts too, large and tiny values), origins, unknown intervals, crossings."""
        rng = np.random.default_rng(11)
        cases = ((200, 12, 100.0, (90.0, 100.0)), (40, 288, 100.0, (50.0,)), (30, 5, 1e12, ()), (30, 3, 1e-6, (90.0,)))
        for R, H, scale, levels in (*cases, (1, 1, 50.0, (10.0, 60.0, 90.0))):
            p50 = np.abs(rng.uniform(0, scale, (R, 1)) + np.cumsum(rng.normal(0, scale / 30, (R, H)), 1))
            width = np.abs(rng.normal(0, scale / 25, (R, H)))
            fc = np.stack([np.maximum(p50 - width, 0), p50, p50 + width], 1)
            fc[::7] = 95.0
            kw = dict(
                last_ts=1.7e9 + 300 * rng.integers(0, 4, R),
                step_s=300.0,
                last_value=np.where(rng.random(R) < 0.2, 100.0, p50[:, 0]),
                history_length=rng.integers(0, 6, R),
                models=[f'm"{i % 3}\u00e9' for i in range(R)],
                thresholds=levels,
                recent=np.where(rng.random((R, 12)) < 0.3, np.nan, rng.uniform(0, scale, (R, 12))),
            )
            texts = encode_many(fc, **kw)  # type: ignore[arg-type]
            dicts = describe_many(fc, **kw)  # type: ignore[arg-type]
            assert texts == [orjson.dumps(d) for d in dicts]

    def test_no_rows(self) -> None:
        """Nothing in, nothing out."""
        empty = np.zeros(0)
        kw = dict(last_ts=empty, step_s=300.0, last_value=empty, history_length=empty, models=[], thresholds=(90.0,))
        assert encode_many(np.zeros((0, 3, 12)), **kw) == []  # type: ignore[arg-type]


class TestPeak:
    """The peak is one step: the first with the highest median, with that step's p50 and p90."""

    def _describe(self, fc: np.ndarray, history_length: int = 50) -> dict:
        return describe_forecast(
            fc,
            last_ts=1.7e9,
            step_s=300.0,
            last_value=float(fc[1, 0]),
            history_length=history_length,
            model="m",
            thresholds=(90.0,),
        )

    def test_p90_is_the_peak_steps(self) -> None:
        """A band widest at the end does not lend its p90 to an earlier median peak."""
        p50 = np.array([40.0, 60.0, 55.0, 50.0])
        fc = np.stack([p50 - 5, p50, p50 + np.array([5.0, 6.0, 20.0, 30.0])])
        out = self._describe(fc)
        assert out["peak"] == {"timestamp": out["steps"][1]["timestamp"], "p50": 60.0, "p90": 66.0}
        step = out["steps"][1]
        assert (out["peak"]["p50"], out["peak"]["p90"]) == (step["p50"], step["p90"])

    def test_ties_take_the_first_step_and_short_histories_have_no_p90(self) -> None:
        """A flat median peaks at its first step; without an interval the peak's p90 is null."""
        fc = np.stack([np.full(3, 10.0), np.full(3, 20.0), np.array([21.0, 25.0, 30.0])])
        assert self._describe(fc)["peak"] == {
            "timestamp": self._describe(fc)["steps"][0]["timestamp"],
            "p50": 20.0,
            "p90": 21.0,
        }
        assert self._describe(fc, history_length=1)["peak"]["p90"] is None

    def test_schema_says_so(self) -> None:
        """The OpenAPI description of peak.p90 names the peak step, and allows null."""
        pytest.importorskip("fastapi")
        from atomic_usage.service.schemas import Peak

        schema = Peak.model_json_schema()["properties"]["p90"]
        assert "at the peak step" in schema["description"] and {"type": "null"} in schema["anyOf"]
