"""The shipped Prometheus alert rules and Grafana dashboard (checked with promtool when installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
GAUGES = {
    "atomic_forecast_value",
    "atomic_forecast_seconds_to_threshold",
    "atomic_forecast_origin_timestamp_seconds",
}
VARIABLES = {"$threshold": "90", "$metric": "storageUsage", "$step": "12", "$instance": ".*"}


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool binary (Debian package prometheus); the tests skip without it."""
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def _dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


class TestAlertRules:
    """deploy/prometheus-rules.yml."""

    def test_check_rules(self, promtool: str) -> None:
        """promtool check rules accepts the file."""
        r = _run(promtool, "check", "rules", str(DEPLOY / "prometheus-rules.yml"))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "SUCCESS: 5 rules found" in r.stdout

    def test_rule_unit_tests(self, promtool: str) -> None:
        """promtool test rules: a disk full within 24 h at p90 fires; a stale forecast does not."""
        r = _run(promtool, "test", "rules", str(DEPLOY / "prometheus-rules.test.yml"))
        assert r.returncode == 0, r.stdout + r.stderr

    def test_scrape_config(self, promtool: str) -> None:
        """The example scrape job is a valid configuration and keeps the instance label."""
        r = _run(promtool, "check", "config", str(DEPLOY / "prometheus-scrape.yml"))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "honor_labels: true" in (DEPLOY / "prometheus-scrape.yml").read_text()

    def test_rules_use_exported_gauges(self) -> None:
        """Every atomic_ metric a rule names is one the service exports."""
        names = set(re.findall(r"\batomic_[a-z_]+", (DEPLOY / "prometheus-rules.yml").read_text()))
        assert names and names <= GAUGES | {"atomic_usage"}


class TestGrafanaDashboard:
    """deploy/grafana-dashboard.json."""

    def test_valid_dashboard(self) -> None:
        """The JSON loads, has a uid and panels with unique ids, each with a query."""
        dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
        ids = [p["id"] for p in dash["panels"]]
        assert dash["uid"] and len(ids) == len(set(ids)) and all(p["targets"] for p in dash["panels"])

    def test_queries_use_exported_gauges(self) -> None:
        """Every atomic_ metric a panel queries is one the service exports."""
        names = {n for e in _dashboard_exprs() for n in re.findall(r"\batomic_[a-z_]+", e)}
        assert names == GAUGES

    def test_queries_parse(self, promtool: str, tmp_path: Path) -> None:
        """With its variables filled in, every query is valid PromQL (checked as recording rules)."""
        rules = []
        for k, expr in enumerate(_dashboard_exprs()):
            for var, value in VARIABLES.items():
                expr = expr.replace(var, value)
            rules.append(f"      - record: dashboard:query{k}\n        expr: {json.dumps(expr)}\n")
        f = tmp_path / "dash-rules.yml"
        f.write_text("groups:\n  - name: dashboard\n    rules:\n" + "".join(rules))
        r = _run(promtool, "check", "rules", str(f))
        assert r.returncode == 0, r.stdout + r.stderr
