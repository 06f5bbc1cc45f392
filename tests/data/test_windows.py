"""Windows are views into the history, never copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atomic_usage.data import (
    SeriesBank,
    build_trainset,
    generate_series,
    last_windows,
    make_windows,
    read_trainset,
    regularize,
    write_trainset,
)


class TestWindows:
    """sliding-window views and the series bank."""

    def test_make_windows_shares_memory(self) -> None:
        """Every window is a view of the source array."""
        src = np.arange(100, dtype=np.float32)
        w = make_windows(src, 10)
        assert w.shape == (91, 10) and np.shares_memory(w, src)
        assert w[5].tolist() == list(range(5, 15))

    def test_bank_windows_stay_inside_series(self) -> None:
        """Windows never straddle two series, and they are views of the bank's flat array."""
        panel, _ = regularize(generate_series(3, n_steps=20, seed=1))
        bank = SeriesBank.from_panel(panel)
        view, starts, series_of = bank.windows(8)
        assert np.shares_memory(view, bank.values)
        assert len(starts) == len(bank) * (20 - 8 + 1)
        for s, i in zip(starts[::7], series_of[::7], strict=True):
            assert bank.offsets[i] <= s and s + 8 <= bank.offsets[i + 1]

    def test_trainset_round_trip_is_zero_copy(self, tmp_path: Path) -> None:
        """A training set written as Parquet reads back equal, its windows views of the Arrow buffer."""
        path = tmp_path / "ts.csv"
        generate_series(6, n_steps=50, seed=2).to_csv(path, index=False)
        bank, holdout, reports = build_trainset([path], holdout_last=["1h"])
        assert set(bank.lengths.tolist()) == {50 - 12} and reports[0].n_series == 6
        write_trainset(bank, holdout, tmp_path / "t.parquet")
        back, h2 = read_trainset(tmp_path / "t.parquet")
        assert np.array_equal(back.values, bank.values) and np.array_equal(h2, holdout)
        assert back.metrics.tolist() == bank.metrics.tolist()
        view, _, _ = back.windows(10)
        assert np.shares_memory(view, back.values)

    def test_last_windows_pad_short_series(self) -> None:
        """Short histories are left-padded with NaN."""
        out = last_windows([np.array([1.0, 2.0]), np.arange(10.0)], 4)
        assert np.isnan(out[0, :2]).all() and out[0, 2:].tolist() == [1, 2]
        assert out[1].tolist() == [6, 7, 8, 9]
