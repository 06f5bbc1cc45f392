"""describe_many: the per-metric results of many series at once, each equal to describe_forecast of it."""

from __future__ import annotations

import numpy as np
import orjson

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
