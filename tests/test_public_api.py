"""The public surface is exactly what __all__ says, sorted, and light to import."""

from __future__ import annotations

import subprocess
import sys

import atomic_usage


class TestPublicApi:
    """Guard the top-level namespace (after httpx tests/test_exported_members.py)."""

    def test_all_sorted_and_complete(self) -> None:
        """__all__ is sorted and every name in it resolves."""
        assert atomic_usage.__all__ == sorted(atomic_usage.__all__)
        for name in atomic_usage.__all__:
            assert getattr(atomic_usage, name) is not None

    def test_no_other_public_names(self) -> None:
        """Every public module attribute is listed in __all__ (subpackages aside)."""
        public = {n for n in vars(atomic_usage) if not n.startswith("_")}
        subpackages = {
            "config",
            "errors",
            "data",
            "models",
            "engine",
            "security",
            "service",
            "cluster",
            "report",
            "cli",
            "_types",
            "annotations",
        }
        assert public - set(atomic_usage.__all__) - subpackages == set()

    def test_import_is_light(self) -> None:
        """import atomic_usage loads neither torch, onnxruntime nor pandas."""
        code = (
            "import sys, atomic_usage; print(sorted(m for m in ('torch','onnxruntime','pandas') if m in sys.modules))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "[]"
