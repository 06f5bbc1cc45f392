"""Per kind of odd input (../shared/cases/README.md), properties over many generated inputs of that shape.

Invariants: no NaN or infinity where a value is given, quantiles in order and in [0, 100],
nulls only where the ``model``/``reason`` columns say why, a time to threshold never 0,
negative or beyond the horizon (and none for a flat or falling series), good series
unaffected by bad neighbours, output independent of row order, errors naming id, field
and timestamp. The naive baseline serves where the model is not the subject.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from atomic_usage.data.regularize import regularize
from atomic_usage.data.validation import CLIP_TOLERANCE, SeriesIssue, validate_wide
from atomic_usage.engine.forecast import describe_forecast
from atomic_usage.engine.payload import parse_payload
from atomic_usage.errors import PayloadError
from atomic_usage.models.artifact import load_model
from atomic_usage.models.base import NO_FORECAST, forecast_frame
from atomic_usage.models.baselines import Naive
from atomic_usage.models.lines import exact_lines

T0 = pd.Timestamp("2026-11-30T00:00:00Z")
STEP = pd.Timedelta(minutes=5)
H = 6
Q = ["p10", "p50", "p90"]
FEW = settings(max_examples=25, deadline=None)
MODEL = load_model(None)

levels = st.floats(0.0, 100.0, allow_nan=False)


def frame(values: dict[str, list[float | None]], *, metric: str = "cpuLoad") -> pd.DataFrame:
    rows = [(sid, T0 + STEP * k, np.nan if v is None else v) for sid, vs in values.items() for k, v in enumerate(vs)]
    return pd.DataFrame(rows, columns=["id", "timestamp", metric])


def run(df: pd.DataFrame, model: object = None, issues: list[SeriesIssue] | None = None) -> pd.DataFrame:
    issues = [] if issues is None else issues
    clean = validate_wide(df, out_of_range="reject", issues=issues)
    panel, _ = regularize(clean)
    return forecast_frame(model or Naive(), panel, H, issues=issues)  # type: ignore[arg-type]


def check(out: pd.DataFrame) -> None:
    has = ~out["model"].isin(NO_FORECAST)
    short = out["reason"].str.startswith("short history")
    v = out.loc[has & ~short, Q].to_numpy()
    assert np.isfinite(v).all() and (v >= 0).all() and (v <= 100).all()
    assert (v[:, 0] <= v[:, 1]).all() and (v[:, 1] <= v[:, 2]).all()
    assert out.loc[has, "p50"].notna().all() and out.loc[~has, Q].isna().all().all()
    assert (out.loc[~has | short, "reason"] != "").all()
    # mean: Swanson's rule inside the band; the median where the band is unknown; null with no forecast
    mean = out.loc[has & ~short, "mean"].to_numpy()
    assert (v[:, 0] <= mean).all() and (mean <= v[:, 2]).all()
    assert (out.loc[has & short, "mean"] == out.loc[has & short, "p50"]).all()
    assert out.loc[~has, "mean"].isna().all()


class TestConstant:
    """Constant series at any level are forecast at that level exactly, with a zero-width interval."""

    @FEW
    @given(level=levels, n=st.integers(3, 300))
    def test_bundled_model_keeps_any_level(self, level: float, n: int) -> None:
        out = run(frame({"c": [level] * n}), MODEL)
        check(out)
        assert np.abs(out[Q].to_numpy() - level).max() <= 1e-9


class TestGaps:
    """Gaps of any length and position are neither zero nor compressed out of the time axis."""

    @FEW
    @given(
        n=st.integers(4, 120),
        start=st.integers(1, 100),
        length=st.integers(1, 60),
        slope=st.floats(-0.5, 0.5),
    )
    def test_gap_keeps_time_and_values(self, n: int, start: int, length: int, slope: float) -> None:
        vals: list[float | None] = [float(np.clip(50 + slope * k, 0, 100)) for k in range(n)]
        for k in range(start, min(start + length, n - 1)):
            vals[k] = None
        out = run(frame({"g": vals}), MODEL)
        check(out)
        assert out["timestamp"].iloc[0] == T0 + STEP * n  # the grid kept every step
        # never 0 for want of data; a falling line may reach 0 within the horizon (and is clipped there)
        seen = [v for v in vals if v is not None]
        assert (out["p50"] > 0).all() or min(seen) == 0 or seen[-1] + slope * len(out) <= 0


class TestOrderAndDuplicates:
    """Row order never matters, and repeated timestamps merge by their mean wherever they are."""

    @FEW
    @given(
        values=st.lists(levels, min_size=3, max_size=60),
        seed=st.integers(0, 2**16),
        dups=st.lists(st.tuples(st.integers(0, 59), levels), max_size=5),
    )
    def test_any_order_any_duplicates(self, values: list[float], seed: int, dups: list[tuple[int, float]]) -> None:
        df = frame({"a": list(values), "b": list(values[::-1])})
        extra = [("a", T0 + STEP * (k % len(values)), v) for k, v in dups]
        if extra:
            df = pd.concat([df, pd.DataFrame(extra, columns=df.columns)], ignore_index=True)
        out = run(df)
        check(out)
        shuffled = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        pd.testing.assert_frame_equal(out, run(shuffled))


class TestOutOfRange:
    """Small overshoots are clipped; far-out values reject only their series, named by id, field and time."""

    @FEW
    @given(over=st.floats(0.001, CLIP_TOLERANCE), under=st.booleans(), at=st.integers(0, 11))
    def test_just_outside_is_clipped(self, over: float, under: bool, at: int) -> None:
        vals: list[float | None] = [50.0] * 12
        vals[at] = -over if under else 100 + over
        out = run(frame({"x": vals}))
        check(out)
        assert set(out["model"]) == {"naive"}

    @FEW
    @given(
        far=st.one_of(
            st.floats(100 + CLIP_TOLERANCE + 0.01, 1e6),
            st.floats(-1e6, -CLIP_TOLERANCE - 0.01),
            st.just(float("inf")),
        ),
        at=st.integers(0, 11),
    )
    def test_far_outside_rejects_the_series_only(self, far: float, at: int) -> None:
        good = [20.0 + k for k in range(12)]
        bad: list[float | None] = [50.0] * 12
        bad[at] = far
        issues: list[SeriesIssue] = []
        out = run(frame({"bad": bad, "good": good}), issues=issues)
        check(out)
        assert [(i.id, i.metric, i.timestamp) for i in issues] == [
            ("bad", "cpuLoad", f"2026-11-30T{at // 12:02d}:{(at * 5) % 60:02d}:00Z")
        ]
        assert set(out.loc[out["id"] == "bad", "model"]) == {"error"}
        pd.testing.assert_frame_equal(out[out["id"] == "good"].reset_index(drop=True), run(frame({"good": good})))


class TestLengths:
    """Series of any length up to the model's context; nulls only where too short, and said so."""

    @FEW
    @given(n=st.integers(0, 288), level=levels, noise=st.floats(0, 20))
    def test_any_length(self, n: int, level: float, noise: float) -> None:
        rng = np.random.default_rng(n)
        vals = np.clip(level + noise * rng.standard_normal(max(n, 1)), 0, 100).tolist()
        data: dict[str, list[float | None]] = {"s": list(vals) if n else [None], "ok": [10.0] * 5}
        out = run(frame(data), MODEL)
        check(out)
        s = out[out["id"] == "s"]
        if n == 0:
            assert set(s["model"]) == {"error"} and s["reason"].str.startswith("no observations").all()
        elif n < 3:
            assert s[["p10", "p90"]].isna().all().all() and (s["p50"] == vals[-1]).all()
        else:
            assert s[Q].notna().all().all()

    @pytest.mark.parametrize("model", [MODEL, Naive()], ids=["bundled", "naive"])
    def test_values_apart_after_an_outage_get_no_band(self, model: object) -> None:
        """Three values with hours between the first two (a collector outage) hold one change: the
        forecast is the last value with p10/p90 null and a reason, as for fewer than three values;
        it was a zero-width band (p10 = p50 = p90), certainty learnt from one change of 0."""
        out = run(frame({"s": [5.0] + [None] * 47 + [6.0, 6.0], "ok": [10.0, 12.0, 11.0, 13.0, 12.0]}), model)
        check(out)
        s = out[out["id"] == "s"]
        assert s[["p10", "p90"]].isna().all().all() and (s["p50"] == 6.0).all()
        assert set(s["model"]) == {"naive(short-history)"}
        assert s["reason"].str.contains("3 observed values but 1 change").all()
        assert out[out["id"] == "ok"][Q].notna().all().all()  # a dense neighbour keeps its band


class TestTrendsAndThresholds:
    """Trends stop at the bounds; a time to threshold is positive, within the horizon, never when falling."""

    @FEW
    @given(start=levels, slope=st.floats(-5, 5), n=st.integers(12, 100))
    def test_exact_lines_stop_at_the_bounds(self, start: float, slope: float, n: int) -> None:
        vals = np.clip(start + slope * np.arange(n), 0, 100)
        out = run(frame({"l": vals.tolist()}), MODEL)
        check(out)

    @FEW
    @given(last=levels, drop=st.floats(0, 5), width=st.floats(0, 30), level=st.sampled_from([90.0, 100.0]))
    def test_flat_or_falling_never_crosses(self, last: float, drop: float, width: float, level: float) -> None:
        p50 = np.clip(last - drop * np.arange(1, 13), 0, 100)
        fc = np.stack([np.clip(p50 - width, 0, 100), p50, np.minimum(p50, 100)])
        d = describe_forecast(
            fc,
            last_ts=0.0,
            step_s=300.0,
            last_value=last,
            history_length=50,
            model="m",
            thresholds=[level],
            recent=np.full(12, last),
        )
        t = d["thresholds"][0]
        # compared as reported (4 decimals): 99.99999999999999 shows as 100.0, already at 100
        assert t["p50"] is None and t["p90"] is None and t["alreadyAbove"] == (round(last, 4) >= level)

    @FEW
    @given(last=levels, rise=st.floats(0.01, 10), level=st.sampled_from([90.0, 100.0]))
    # A fresh clone's `make test` drew this one: 99.99999999999999 is reported as 100.0, so it is
    # already at 100 (alreadyAbove) and has no crossing, although the raw float is below 100.
    @example(last=99.99999999999999, rise=1.0, level=100.0)
    @example(last=89.99999, rise=0.01, level=90.0)
    def test_rising_crossing_is_positive_and_bounded(self, last: float, rise: float, level: float) -> None:
        """Compared as reported (4 decimals, forecast._crossings): a crossing needs an origin that shows
        below the level and lands 1 to H steps ahead; no crossing means the origin already shows at or
        past the level, or no reported step reaches it."""
        p50 = np.clip(last + rise * np.arange(1, 13), 0, 100)
        fc = np.stack([p50, p50, p50])
        d = describe_forecast(
            fc, last_ts=0.0, step_s=300.0, last_value=last, history_length=50, model="m", thresholds=[level]
        )
        t = d["thresholds"][0]
        shown = round(last, 4)
        assert t["alreadyAbove"] == (shown >= level)
        if t["p50"] is not None:
            assert 300.0 <= t["p50"]["secondsFromNow"] <= 12 * 300.0 and shown < level
        else:
            assert shown >= level or p50.round(4).max() < level

    def test_exact_line_rule_needs_a_real_trend(self) -> None:
        """Three collinear points are not a trend; twelve are (see models/lines.py)."""
        idx, _, _ = exact_lines([np.arange(3.0), np.arange(12.0)], 2, 288)
        assert idx.tolist() == [1]


class TestMixedPayloads:
    """Mixed good and bad payload records: every bad one is named by index, id and field; good ones parse."""

    @settings(max_examples=50, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.booleans(),
                st.one_of(
                    st.just("NaN"),
                    st.just("45.2"),
                    st.just(float("nan")),
                    st.floats(100.01, 1e9),
                    st.booleans(),
                ),
            ),
            min_size=1,
            max_size=8,
        )
    )
    def test_bad_records_are_named(self, recs: list[tuple[bool, object]]) -> None:
        payload = {
            "usageData": [
                {"id": f"vm-{i}", "cpuLoad": 10.0 if ok else bad, "timestamp": i} for i, (ok, bad) in enumerate(recs)
            ]
        }
        bad_ids = {f"vm-{i}" for i, (ok, _) in enumerate(recs) if not ok}
        if not bad_ids:
            assert len(parse_payload(payload)) == len(recs)
            return
        with pytest.raises(PayloadError) as info:
            parse_payload(payload)
        assert {(e.record_id, e.field) for e in info.value.errors} == {(b, "cpuLoad") for b in bad_ids}
        assert str(info.value).count(".") >= 1 and "send the payload again" in str(info.value)
