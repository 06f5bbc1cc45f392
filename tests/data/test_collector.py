"""The local collector: samples of this machine, appended to a history file and read back."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from atomic_usage.config import Settings
from atomic_usage.data.collector import (
    append_sample,
    collect,
    collect_once,
    collector_path,
    read_collected,
)
from atomic_usage.errors import DataError

pytest.importorskip("psutil")


class TestCollectOnce:
    """One sample of this machine."""

    def test_sample_is_in_percent(self) -> None:
        """CPU, memory and storage are percents; the id defaults to the host name."""
        s = collect_once(cpu_interval_s=0.05)
        assert s["id"] and s["timestamp"].endswith("Z")
        for m in ("cpuLoad", "memoryUsage", "storageUsage"):
            assert 0.0 <= s[m] <= 100.0

    def test_missing_mount(self) -> None:
        """A mount point that does not exist is a DataError naming it."""
        with pytest.raises(DataError, match="/no/such/mount"):
            collect_once(mount="/no/such/mount", cpu_interval_s=0.0)


class TestHistoryFile:
    """Appending and reading the history file."""

    def test_collect_count_then_read(self, tmp_path: Path) -> None:
        """collect writes count samples on schedule; read_collected returns them as a wide frame."""
        settings = Settings(data_dir=tmp_path)
        waits: list[float] = []
        now = [0.0]

        def sleep(s: float) -> None:
            waits.append(s)
            now[0] += s + 1.0  # each sample takes a second longer than the wait

        n = collect(settings, interval_s=300, count=3, machine_id="me", sleep=sleep, clock=lambda: now[0])
        assert n == 3 and waits == [300.0, 299.0]
        df = read_collected(settings)
        assert list(df.columns) == ["id", "timestamp", "cpuLoad", "memoryUsage", "storageUsage"]
        assert df["id"].tolist() == ["me"] * 3 and str(df["timestamp"].dt.tz) == "UTC"

    def test_torn_last_line_is_ignored(self, tmp_path: Path) -> None:
        """A line cut short by a crash is not read."""
        settings = Settings(data_dir=tmp_path)
        sample = {
            "id": "m",
            "timestamp": "2024-01-01T00:00:00Z",
            "cpuLoad": 1,
            "memoryUsage": 2,
            "storageUsage": 3,
        }
        append_sample(collector_path(settings), sample)
        with open(collector_path(settings), "a") as f:
            f.write("m,2024-01-01T00:05")
        assert len(read_collected(settings)) == 1

    def test_concurrent_appends_keep_whole_lines(self, tmp_path: Path) -> None:
        """Writers appending at once leave one header and only whole lines."""
        path = tmp_path / "c.csv"

        def write(k: int) -> None:
            for i in range(50):
                append_sample(
                    path,
                    {
                        "id": f"w{k}",
                        "timestamp": f"2024-01-01T00:{i:02d}:00Z",
                        "cpuLoad": 1.5,
                        "memoryUsage": 2,
                        "storageUsage": 3,
                    },
                )

        threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        lines = path.read_text().splitlines()
        assert lines[0].startswith("id,timestamp") and len(lines) == 201
        assert all(line.count(",") == 4 and not line.startswith("id,") for line in lines[1:])

    def test_nothing_collected(self, tmp_path: Path) -> None:
        """Reading before any collection says how to start."""
        with pytest.raises(DataError, match="atomic-usage collect"):
            read_collected(Settings(data_dir=tmp_path))
