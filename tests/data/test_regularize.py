"""regularize(): sorting, repeated timestamps, short and long gaps, on any row order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atomic_usage.data import regularize
from atomic_usage.errors import SchemaError

T0 = pd.Timestamp("2024-01-01T00:00:00Z")


def frame(values: list[float | None], *, sid: str = "a", step_min: int = 5) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": sid,
            "timestamp": [T0 + pd.Timedelta(minutes=step_min * i) for i in range(len(values))],
            "cpuLoad": [np.nan if v is None else v for v in values],
        }
    )


class TestRegularize:
    """Each series ends on a regular grid with nothing invented beyond short gaps."""

    def test_gap_of_three_filled_gap_of_four_masked(self) -> None:
        """A 3-step gap is interpolated; a 4-step gap stays missing."""
        df = frame([0, None, None, None, 4, None, None, None, None, 9])
        panel, rep = regularize(df)
        v = panel.series(0, "cpuLoad")
        assert v[:5].tolist() == [0, 1, 2, 3, 4]
        assert np.isnan(v[5:9]).all() and v[9] == 9
        assert rep.filled == 3 and rep.masked == 4

    def test_left_missing_counts_only_series_that_are_forecast(self) -> None:
        """A fresh-clone user saw "3 left missing" for a file whose only gaps were a rejected series
        (masked whole, reported as not forecast): a series with no observed value is not counted."""
        df = pd.concat([frame([0, None, None, None, None, 5]), frame([None, None, None], sid="b")])
        df["memoryUsage"] = np.nan  # no data anywhere: not forecast either
        _, rep = regularize(df, max_fill=0)
        assert rep.masked == 4

    def test_missing_rows_are_gaps_in_time(self) -> None:
        """Rows absent from the file open gaps on the time axis, they are not compressed out."""
        df = frame([1, 2, 3]).drop(index=1)
        panel, _ = regularize(df, max_fill=0)
        assert panel.lengths.tolist() == [3] and np.isnan(panel.series(0, "cpuLoad")[1])

    def test_duplicates_averaged_independent_of_order(self) -> None:
        """Repeated timestamps merge by their mean, whatever the row order; the count is reported."""
        df = pd.concat([frame([30]), frame([90, 40])], ignore_index=True)
        a, rep = regularize(df)
        b, _ = regularize(df.iloc[::-1])
        assert a.series(0, "cpuLoad").tolist() == [60.0, 40.0] == b.series(0, "cpuLoad").tolist()
        assert rep.duplicates == 1 and rep.unsorted_ids == 0
        assert regularize(df.iloc[::-1])[1].unsorted_ids == 1

    def test_off_grid_timestamps_snap_down(self) -> None:
        """14:27 joins the 14:25 step."""
        df = pd.DataFrame(
            {
                "id": "a",
                "timestamp": pd.to_datetime(["2024-01-01 14:27", "2024-01-01 14:32"], utc=True),
                "value": [1.0, 2.0],
            }
        )
        panel, _ = regularize(df)
        assert pd.Timestamp(panel.start[0], tz="UTC") == pd.Timestamp("2024-01-01T14:25Z")

    def test_series_of_different_lengths_and_starts(self) -> None:
        """Ids keep their own start and length."""
        df = pd.concat([frame([1, 2, 3], sid="x"), frame([5], sid="y")], ignore_index=True)
        panel, _ = regularize(df)
        assert panel.ids.tolist() == ["x", "y"] and panel.lengths.tolist() == [3, 1]
        back = panel.to_frame()
        assert len(back) == 4 and back["cpuLoad"].tolist() == [1, 2, 3, 5]

    def test_bad_step(self) -> None:
        """A step that is not positive is refused."""
        with pytest.raises(SchemaError, match="step must be positive"):
            regularize(frame([1]), "0min")

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.one_of(st.none(), st.floats(0, 100)), min_size=1, max_size=60), st.randoms())
    def test_any_row_order_gives_the_same_panel(self, values: list[float | None], rnd: object) -> None:
        """Shuffling rows never changes the result, and no value leaves [min, max] of the input."""
        df = frame(values)
        perm = list(range(len(df)))
        rnd.shuffle(perm)  # type: ignore[attr-defined]
        a, _ = regularize(df)
        b, _ = regularize(df.iloc[perm])
        va, vb = a.series(0, "cpuLoad"), b.series(0, "cpuLoad")
        assert np.array_equal(va, vb, equal_nan=True)
        obs = [v for v in values if v is not None]
        if obs:
            fin = va[~np.isnan(va)]
            assert fin.min() >= min(obs) - 1e-9 and fin.max() <= max(obs) + 1e-9
