"""The latest forecasts as Prometheus gauges, so alert rules can act on predictions.

Three families, built at each scrape from the newest ``process()`` result of every machine:

``atomic_forecast_value{instance, metric, quantile, step}``
    the predicted value (percent) ``step`` steps after the forecast's origin, at
    quantile 0.1, 0.5 or 0.9.
``atomic_forecast_seconds_to_threshold{instance, metric, threshold, quantile}``
    seconds from the scrape until the quantile (0.5 or 0.9) first reaches the threshold;
    0 when the newest value is already at or above it, ``+Inf`` when no step within the
    horizon reaches it. Counted from the scrape, not from the forecast, so an old forecast
    counts down instead of promising the same lead for ever.
``atomic_forecast_origin_timestamp_seconds{instance, metric}``
    when the forecast starts (Unix seconds): alert rules can ignore stale forecasts.

The ``instance`` label is the machine's id, so scrape the service with ``honor_labels: true``
(otherwise Prometheus renames it ``exported_instance``). Every exported step adds
3 series per machine and metric: pass ``steps`` to export only some of them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import orjson

if TYPE_CHECKING:
    from prometheus_client.core import GaugeMetricFamily

__all__ = ["ForecastGauges", "forecast_metric_families"]

_QUANTILES: Final = (("p10", "0.1"), ("p50", "0.5"), ("p90", "0.9"))


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _origin(forecast: Mapping[str, Any], fallback: str | None) -> float:
    steps = forecast["steps"]
    if len(steps) >= 2:
        t0, t1 = _ts(steps[0]["timestamp"]), _ts(steps[1]["timestamp"])
        return t0 - (t1 - t0)
    return _ts(fallback) if fallback else _ts(steps[0]["timestamp"])


def forecast_metric_families(
    latest: Iterable[Mapping[str, Any]],
    *,
    now: float,
    steps: Sequence[int] | None = None,
    prefix: str = "atomic_forecast",
) -> list[GaugeMetricFamily]:
    """Builds the gauge families from per-machine ``process()`` results.

    Args:
        latest: results as in ``process(...)["results"]``: ``{"id", "timestamp",
            "forecasts": {metric: describe_forecast(...) or None}}``, one per machine.
        now: the scrape's time (Unix seconds), from which seconds to threshold count.
        steps: the horizon steps (1-based) to export; None exports every step.
        prefix: the metric names' prefix.

    Returns:
        ``[<prefix>_value, <prefix>_seconds_to_threshold, <prefix>_origin_timestamp_seconds]``.
    """
    from prometheus_client.core import GaugeMetricFamily

    value = GaugeMetricFamily(
        f"{prefix}_value",
        "Predicted usage (percent) per machine, metric, quantile and horizon step.",
        labels=["instance", "metric", "quantile", "step"],
    )
    to_threshold = GaugeMetricFamily(
        f"{prefix}_seconds_to_threshold",
        "Seconds until the quantile forecast first reaches the threshold (0: already there; +Inf: not "
        "within the horizon).",
        labels=["instance", "metric", "threshold", "quantile"],
    )
    origin = GaugeMetricFamily(
        f"{prefix}_origin_timestamp_seconds",
        "Unix time of the last observation the forecast starts from.",
        labels=["instance", "metric"],
    )
    wanted = None if steps is None else set(steps)
    for result in latest:
        machine = str(result["id"])
        for metric, fc in (result.get("forecasts") or {}).items():
            if not fc or not fc.get("steps"):
                continue
            origin.add_metric([machine, metric], _origin(fc, result.get("timestamp")))
            for k, step in enumerate(fc["steps"], start=1):
                if wanted is not None and k not in wanted:
                    continue
                for key, q in _QUANTILES:
                    if step.get(key) is not None:  # p10/p90 are null when the history is too short
                        value.add_metric([machine, metric, q, str(k)], float(step[key]))
            interval_known = fc["steps"][0].get("p90") is not None
            for th in fc.get("thresholds", []):
                level = f"{float(th['level']):g}"
                for key, q in (("p50", "0.5"), ("p90", "0.9")):
                    if key == "p90" and not interval_known:
                        continue
                    hit = th.get(key)
                    if th.get("alreadyAbove"):
                        secs = 0.0
                    elif hit is None:
                        secs = math.inf
                    else:
                        secs = max(_ts(hit["timestamp"]) - now, 0.0)
                    to_threshold.add_metric([machine, metric, level, q], secs)
    return [value, to_threshold, origin]


class ForecastGauges:
    """A prometheus_client collector holding the newest forecast of every machine.

    Register it once (``registry.register(gauges)``) and feed it every ``process()``
    result with :meth:`update`; each scrape builds the families from what it holds.
    Thread-safe: the service updates it while the metrics endpoint scrapes.

    Args:
        steps: horizon steps to export (None: all).
        clock: Unix time now (tests pass a fake).
        prefix: the metric names' prefix.
    """

    def __init__(
        self,
        *,
        steps: Sequence[int] | None = None,
        clock: Callable[[], float] = time.time,
        prefix: str = "atomic_forecast",
    ) -> None:
        self.steps = steps
        self.clock = clock
        self.prefix = prefix
        self._latest: dict[str, Mapping[str, Any] | bytes] = {}
        self._lock = threading.Lock()

    def update(self, result: Mapping[str, Any]) -> None:
        """Keeps the newest forecast of each machine of a ``process()`` result (or one of its results)."""
        items = result["results"] if "results" in result else [result]
        with self._lock:
            for r in items:
                self._latest[str(r["id"])] = r

    def update_encoded(self, results: Iterable[tuple[str, bytes]]) -> None:
        """:meth:`update` from ``(machine id, the result's JSON text)`` pairs, decoded at scrape time.

        The service keeps the text it already has: a machine's newest result held as nested
        dicts between scrapes is many long-lived objects for the cyclic GC to rescan
        (measured: ~8 % of the service's CPU under load), its text is one.
        """
        with self._lock:
            for machine_id, text in results:
                self._latest[str(machine_id)] = text

    def forget(self, machine_id: str) -> None:
        """Stops exporting a machine (e.g. decommissioned)."""
        with self._lock:
            self._latest.pop(machine_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._latest)

    def encoded(self) -> list[bytes]:
        """The newest result of each machine held, as JSON text (for the sibling processes' scrapes)."""
        with self._lock:
            held = list(self._latest.values())
        return [r if isinstance(r, bytes) else orjson.dumps(r) for r in held]

    def families(self, latest: Iterable[Mapping[str, Any]]) -> list[GaugeMetricFamily]:
        """The gauge families of ``latest`` results, with this collector's steps, prefix and clock."""
        return forecast_metric_families(latest, now=self.clock(), steps=self.steps, prefix=self.prefix)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Called by prometheus_client at each scrape."""
        with self._lock:
            held = list(self._latest.values())
        latest = [orjson.loads(r) if isinstance(r, bytes) else r for r in held]
        yield from self.families(latest)

    def describe(self) -> list[Any]:
        """No fixed description: registering must not run a (possibly empty) collect."""
        return []
