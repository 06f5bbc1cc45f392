"""Fixtures of the case tests: the shared case files (skipped when absent) and helpers to run them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SHARED


@pytest.fixture(scope="session")
def cases_dir() -> Path:
    """../shared/cases beside the project; the tests that read it skip on a user's clone."""
    d = SHARED / "cases"
    if not (d / "README.md").is_file():
        pytest.skip("../shared/cases is not beside the project (it is only on CI and development machines)")
    return d
