"""The HTTP service: a FastAPI app over the engine's ``UsagePredictor`` (needs the ``[service]`` extra).

>>> from atomic_usage.service import create_app  # doctest: +SKIP
>>> app = create_app(Settings.from_env())          # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["create_app"]

if TYPE_CHECKING:
    from .app import create_app
else:

    def __getattr__(name: str) -> Any:
        if name == "create_app":
            try:
                from .app import create_app
            except ImportError as exc:  # pragma: no cover - depends on the installed extras
                raise ImportError(
                    f"The HTTP service needs the service extra ({exc.name} is missing); "
                    "install it with `pip install 'atomic-usage[service]'`."
                ) from exc
            return create_app
        raise AttributeError(name)
