"""The uvicorn server ``atomic-usage serve`` runs: uvicorn's, with a clean SIGTERM exiting 0."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Generator
from types import FrameType

import uvicorn

__all__ = ["Server"]


class Server(uvicorn.Server):
    """``uvicorn.Server`` after which a SIGTERM that stopped it cleanly does not kill the process.

    uvicorn (0.29 and later) raises every signal it handled again once the shutdown is done,
    after putting back the handlers it found; with the default one a process stopped by
    SIGTERM died by the signal: exit status 143 (-15 to ``subprocess``), which supervisors
    (systemd, Kubernetes, ``serve --processes``) count as a failure. Under ``serve
    --processes`` a second SIGTERM (the group's and the one the supervisor forwards) could
    land there too. SIGTERM is the ordinary way to stop a service: after a clean shutdown the
    process exits 0. SIGINT is still raised again (Ctrl-C ends as Ctrl-C).

    ``beat``, when set, is called on every tick of the event loop (ten a second while it
    serves), so that ``serve --processes`` can tell a live process from a stopped or hung one.
    """

    beat: Callable[[], None] | None = None

    async def on_tick(self, counter: int) -> bool:
        if self.beat is not None:
            self.beat()
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's, over a SIGTERM handler that lets a SIGTERM through as before unless the
        shutdown has begun: uvicorn puts this one back, so neither the SIGTERM it raises again
        nor a late second one ends a process that shut down cleanly."""
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
