"""The uvicorn server ``atomic-usage serve`` runs: uvicorn's, with a clean SIGTERM exiting 0."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Generator
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

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's, over a SIGTERM handler that ignores a SIGTERM arriving after the shutdown.

        Under ``serve --processes`` a serving process gets the group's SIGTERM and the one the
        supervisor forwards; the second, landing after uvicorn had put back the handler it
        found (the default), killed a process that had shut down cleanly (status -15). uvicorn
        now puts back this one, which lets a SIGTERM through as before unless the shutdown has
        begun.
        """
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGTERM)

            def late_term(sig: int, frame: FrameType | None) -> None:
                if self.should_exit:
                    return  # shutting down or done: a second SIGTERM changes nothing
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
                signal.raise_signal(signal.SIGTERM)

            signal.signal(signal.SIGTERM, late_term)
        with super().capture_signals():
            yield
