"""The HTML report in headless Chromium: charts decode, the console stays empty, the page is not blank.

Needs Debian's ``chromium`` package; skips without it. Console messages are read from
Chromium's log (``--enable-logging=stderr``: lines with ``CONSOLE``); whether every chart
decoded is read from a copy of the page with a small checking script (the report itself
has none). A control page with a broken image and a console error proves both detectors.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from atomic_usage.data import generate_series, regularize  # noqa: E402
from atomic_usage.models.base import forecast_frame  # noqa: E402
from atomic_usage.models.baselines import PredictLinear  # noqa: E402
from atomic_usage.report import write_report  # noqa: E402

CHECK_IMAGES = (
    "<script>window.addEventListener('load', () => { const ok = [...document.images]"
    ".filter(i => i.complete && i.naturalWidth > 0).length;"
    " document.title = 'images:' + ok + '/' + document.images.length; });</script>"
)
FAN_RGB = np.array([0xF2, 0x8E, 0x2B]) / 255


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium binary; the tests skip without it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed (apt-get install chromium)")


def _run(chromium: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium, isolated (own profile, no network services), logging console messages."""
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False, cwd=tmp)


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def _decoded(chromium: str, tmp: Path, page: Path) -> str:
    """The page's title after load on a copy with CHECK_IMAGES: 'images:<decoded>/<total>'."""
    copy = tmp / f"check-{page.name}"
    copy.write_text(page.read_text().replace("</body>", CHECK_IMAGES + "</body>"))
    r = _run(chromium, tmp, "--virtual-time-budget=5000", "--dump-dom", copy.as_uri())
    start = r.stdout.find("<title>")
    return r.stdout[start + 7 : r.stdout.find("</title>")] if start >= 0 else r.stdout[:200] + r.stderr[-500:]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report of three generated machines forecast one day ahead by predict_linear."""
    hist = generate_series(3, n_steps=2 * 288, seed=7)
    panel, _ = regularize(hist)
    fc = forecast_frame(PredictLinear(), panel, 288)
    return write_report(tmp_path_factory.mktemp("report") / "report.html", hist, fc, top=2)


class TestReportInChromium:
    """The report as a browser shows it."""

    def test_detectors_catch_a_broken_page(self, chromium: str, tmp_path: Path) -> None:
        """Control: a broken image and a console error are both detected."""
        bad = tmp_path / "bad.html"
        bad.write_text(
            "<!DOCTYPE html><html><head><title>x</title></head><body><img src='missing.png'>"
            "<script>console.error('boom')</script></body></html>"
        )
        assert _decoded(chromium, tmp_path, bad) == "images:0/1"
        r = _run(chromium, tmp_path, "--virtual-time-budget=2000", "--dump-dom", bad.as_uri())
        assert any("boom" in line for line in _console(r.stderr))

    def test_charts_decode(self, chromium: str, report: Path, tmp_path: Path) -> None:
        """Every embedded chart is decoded by the browser."""
        assert _decoded(chromium, tmp_path, report) == "images:2/2"

    def test_screenshot_no_console_errors_not_blank(self, chromium: str, report: Path, tmp_path: Path) -> None:
        """The screenshot shows table and charts (not blank, fan colour present); no console output."""
        shot = tmp_path / "shot.png"
        r = _run(chromium, tmp_path, "--window-size=1280,1600", f"--screenshot={shot}", report.as_uri())
        assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
        assert _console(r.stderr) == []
        import matplotlib.image

        img = matplotlib.image.imread(shot)[..., :3]
        gray = img.mean(axis=2)
        assert gray.std() > 0.05  # a blank page has no variance
        assert (gray < 0.9).mean() > 0.03  # ink: text, lines, fans
        fan = np.abs(img - FAN_RGB).max(axis=2) < 0.08
        assert fan.sum() > 500, "no forecast line in the screenshot"
        assert pd.Series(gray.ravel()).nunique() > 50
