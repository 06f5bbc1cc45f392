"""Pictures: threshold crossings, fan charts, score charts and the self-contained HTML report.

A layer beside ``service``: it uses ``models`` output (the long forecast frame) and
``data`` frames, and nothing below imports it. Needs the ``report`` extra (matplotlib).
"""

from __future__ import annotations

from .charts import eval_chart, fan_chart, figure_png, write_fan_charts
from .html import format_seconds, not_forecast, render_report, write_report
from .ranking import crossings, rank_machines

__all__ = [
    "crossings",
    "eval_chart",
    "fan_chart",
    "figure_png",
    "format_seconds",
    "not_forecast",
    "rank_machines",
    "render_report",
    "write_fan_charts",
    "write_report",
]
