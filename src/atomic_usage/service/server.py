"""The uvicorn server ``atomic-usage serve`` runs: uvicorn's, with a clean SIGTERM exiting 0."""

from __future__ import annotations

import signal
from types import FrameType

import uvicorn

__all__ = ["Server"]


class Server(uvicorn.Server):
    """``uvicorn.Server`` that does not raise again a SIGTERM it has shut down on.

    uvicorn (0.29 and later) re-raises every signal it handled once the shutdown is done, so a
    process stopped by SIGTERM after a clean shutdown died by the signal: exit status 143
    (-15 to ``subprocess``), which supervisors (systemd, Kubernetes, ``serve --processes``)
    count as a failure. SIGTERM is the ordinary way to stop a service: after a clean
    shutdown the process exits 0. SIGINT is still raised again (Ctrl-C ends as Ctrl-C).
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Starts the graceful shutdown, as uvicorn's; a SIGTERM is not kept for raising again."""
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if sig == signal.SIGTERM and isinstance(captured, list):
            captured[:] = [s for s in captured if s != signal.SIGTERM]
