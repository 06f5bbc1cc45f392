"""Prometheus as a source: range-query JSON, paging, retries and error messages (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from atomic_usage.data.prometheus import build_queries, page_ranges, parse_duration, pull, read_prom_json
from atomic_usage.errors import DataError, SchemaError

END = pd.Timestamp("2024-03-01T00:00:00Z")


def _matrix(series: dict[str, list[tuple[float, str]]]) -> dict:
    return {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {"metric": {"instance": k, "job": "node"}, "values": [[t, v] for t, v in pts]}
                for k, pts in series.items()
            ],
        },
    }


class FakeProm:
    """A query_range endpoint: value = (timestamp mod 1 day) / 1000 (+1 on b); fails on demand."""

    def __init__(self, *, fail_first: int = 0, status: int = 503, max_points: int = 11_000) -> None:
        self.calls: list[dict[str, str]] = []
        self.fail_first = fail_first
        self.status = status
        self.max_points = max_points

    def __call__(self, request: httpx.Request) -> httpx.Response:
        p = dict(request.url.params)
        self.calls.append(p)
        if len(self.calls) <= self.fail_first:
            if self.status == 0:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(self.status, json={"status": "error", "errorType": "unavailable"})
        if "bad(" in p["query"]:
            return httpx.Response(
                400, json={"status": "error", "errorType": "bad_data", "error": 'parse error: unexpected "("'}
            )
        start, end, step = float(p["start"]), float(p["end"]), float(p["step"].rstrip("s"))
        ts = np.arange(start, end + step / 2, step)
        if len(ts) > self.max_points:
            return httpx.Response(
                400, json={"status": "error", "errorType": "bad_data", "error": "exceeded maximum resolution"}
            )
        return httpx.Response(
            200,
            json=_matrix(
                {h: [(t, f"{t % 86400 / 1000 + i:.3f}") for t in ts] for i, h in enumerate(["a:9100", "b:9100"])}
            ),
        )


def _client(handler: FakeProm) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


class TestParseDuration:
    """Prometheus durations."""

    @pytest.mark.parametrize(("text", "seconds"), [("7d", 604800), ("5m", 300), ("1h30m", 5400), ("90s", 90)])
    def test_valid(self, text: str, seconds: float) -> None:
        """Units combine as in PromQL."""
        assert parse_duration(text).total_seconds() == seconds

    @pytest.mark.parametrize("text", ["", "7", "5 minutes", "0s", "-1h"])
    def test_invalid(self, text: str) -> None:
        """Anything else is a SchemaError showing the text."""
        with pytest.raises(SchemaError, match="duration|longer than zero"):
            parse_duration(text)


class TestBuildQueries:
    """The node_exporter recipes with the selector and mount point filled in."""

    def test_recipes_carry_selector_and_mount(self) -> None:
        """The selector reaches every recipe and the mount point the storage one."""
        q = build_queries(selector='{job="node"}', mount="/data", step="1m")
        assert 'node_cpu_seconds_total{job="node", mode="idle"}[300s]' in q["cpuLoad"]
        assert 'node_memory_MemAvailable_bytes{job="node"}' in q["memoryUsage"]
        assert 'node_filesystem_avail_bytes{job="node", mountpoint="/data"}' in q["storageUsage"]

    def test_custom_queries_override_and_remove(self) -> None:
        """A custom query replaces a recipe, adds a metric, or (empty) drops one."""
        q = build_queries(queries={"cpuLoad": "my_cpu", "storageUsage": "", "gpu": "my_gpu"})
        assert q["cpuLoad"] == "my_cpu" and q["gpu"] == "my_gpu" and "storageUsage" not in q

    def test_selector_without_braces(self) -> None:
        """A selector must be in braces."""
        with pytest.raises(SchemaError, match="in braces"):
            build_queries(selector='job="node"')


class TestPageRanges:
    """Splitting a long range under the server's point limit."""

    def test_pages_cover_every_step_once(self) -> None:
        """Pages are consecutive on the step grid and hold at most max_points steps."""
        step = pd.Timedelta("1min")
        pages = page_ranges(END, END + step * 25_000, step)
        assert len(pages) == 3
        steps = [int((b - a) / step) + 1 for a, b in pages]
        assert steps == [11_000, 11_000, 3_001]
        assert all(b + step == a2 for (_, b), (a2, _) in zip(pages, pages[1:], strict=False))


class TestReadPromJson:
    """The range-query JSON answer as a wide frame."""

    def test_values_and_timestamps(self, tmp_path: Path) -> None:
        """Instance becomes id, float seconds become UTC timestamps, NaN stays missing, +Inf is dropped."""
        body = _matrix({"h1:9100": [(1700000000, "1.5"), (1700000060.5, "NaN"), (1700000120, "+Inf")]})
        p = tmp_path / "answer.json"
        p.write_text(json.dumps(body))
        df = read_prom_json(p, metric="cpuLoad")
        assert df["id"].tolist() == ["h1:9100"] * 3
        assert df["timestamp"].iloc[1] == pd.Timestamp(1700000060.5, unit="s", tz="UTC")
        assert df["cpuLoad"].iloc[0] == 1.5 and df["cpuLoad"].iloc[1:].isna().all()

    def test_error_answer(self) -> None:
        """An error answer is a SchemaError quoting the server's error."""
        with pytest.raises(SchemaError, match="parse error"):
            read_prom_json({"status": "error", "error": "parse error"})

    def test_not_json(self, tmp_path: Path) -> None:
        """A file that is not JSON names the file."""
        p = tmp_path / "x.json"
        p.write_text("<html>")
        with pytest.raises(SchemaError, match="x.json"):
            read_prom_json(p)


class TestPull:
    """Range queries over HTTP: paging, joining metrics, retries, errors."""

    def test_pages_and_joins_metrics(self) -> None:
        """A range over the point limit is paged; every metric becomes a column on one grid."""
        fake = FakeProm(max_points=100)
        pages: list[str] = []
        df = pull(
            "http://prom:9090",
            range="500m",
            step="1m",
            end=END + pd.Timedelta("30s"),
            client=_client(fake),
            max_points=100,
            progress=pages.append,
        )
        assert len(fake.calls) == 3 * 6 and len(pages) == 18
        assert list(df.columns) == ["id", "timestamp", "cpuLoad", "memoryUsage", "storageUsage"]
        a = df[df["id"] == "a:9100"]
        assert len(a) == 501 and a["timestamp"].is_monotonic_increasing
        assert a["timestamp"].iloc[-1] == END  # end floored to the step grid
        assert a["timestamp"].diff().dropna().eq(pd.Timedelta("1min")).all()
        secs = (a["timestamp"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
        expected = secs % 86400 / 1000
        assert np.allclose(a["memoryUsage"], expected, atol=1e-9)

    def test_retries_5xx_then_succeeds(self) -> None:
        """Two 503 answers are retried with doubling waits."""
        fake, waits = FakeProm(fail_first=2), []
        df = pull("http://p", range="10m", step="1m", end=END, client=_client(fake), sleep=waits.append)
        assert waits == [0.5, 1.0] and len(df) == 22

    def test_unreachable_server(self) -> None:
        """A server that refuses connections is a DataError naming the URL, after the retries."""
        fake, waits = FakeProm(fail_first=99, status=0), []
        with pytest.raises(DataError, match=r"Cannot reach Prometheus at http://p .*ConnectError") as info:
            pull("http://p", range="10m", step="1m", client=_client(fake), retries=2, sleep=waits.append)
        assert not isinstance(info.value, SchemaError) and waits == [0.5, 1.0]

    def test_unreachable_real_socket(self) -> None:
        """A closed loopback port fails the same way (no mock transport)."""
        with pytest.raises(DataError, match="Cannot reach Prometheus"):
            pull("http://127.0.0.1:9", range="10m", step="1m", retries=0, timeout_s=2)

    def test_bad_query_is_not_retried(self) -> None:
        """A rejected query is a SchemaError with the server's text and the query; no retry."""
        fake = FakeProm()
        with pytest.raises(SchemaError, match=r'bad_data: parse error: unexpected "\(".*bad\(') as info:
            pull("http://p", range="10m", step="1m", client=_client(fake), queries={"cpuLoad": "bad("})
        assert "cpuLoad" in str(info.value) and len(fake.calls) == 1

    def test_no_series(self) -> None:
        """Queries that match nothing are a DataError suggesting the selector."""

        def empty(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json=_matrix({}))

        client = httpx.Client(transport=httpx.MockTransport(empty))
        with pytest.raises(DataError, match="No query matched any series"):
            pull("http://p", range="10m", step="1m", client=client)

    def test_bad_url(self) -> None:
        """A URL without a scheme is a SchemaError saying what to give."""
        with pytest.raises(SchemaError, match="http://"):
            pull("localhost:9090", range="10m", step="1m", retries=0)
