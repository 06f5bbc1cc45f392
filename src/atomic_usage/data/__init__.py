"""Data layer: readers, regularization, zero-copy windows, training sets, synthetic fleets.

Knows nothing of models. Every reader returns the wide frame
(``id``, ``timestamp`` in UTC, one float64 column per metric).
"""

from __future__ import annotations

from .collector import collect_once, read_collected
from .issues import InputWarning, SeriesIssue
from .prometheus import pull, read_prom_json
from .readers import read_gcd, read_gcd_dir, read_nab, read_nab_dir, read_wide
from .regularize import Panel, RegularizeReport, regularize
from .synthetic import generate_series
from .trainset import build_trainset, is_holdout, read_source, read_trainset, write_trainset
from .windows import SeriesBank, last_windows, make_windows

__all__ = [
    "InputWarning",
    "Panel",
    "RegularizeReport",
    "SeriesBank",
    "SeriesIssue",
    "build_trainset",
    "collect_once",
    "generate_series",
    "is_holdout",
    "last_windows",
    "make_windows",
    "pull",
    "read_collected",
    "read_gcd",
    "read_gcd_dir",
    "read_nab",
    "read_nab_dir",
    "read_prom_json",
    "read_source",
    "read_trainset",
    "read_wide",
    "regularize",
    "write_trainset",
]
