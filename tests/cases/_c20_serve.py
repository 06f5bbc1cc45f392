"""A real predictor process for the C20 kill test: ``serve`` blocks inside the model, ``recover`` resumes.

``python -m tests.cases._c20_serve DATA_DIR PAYLOAD serve MARKER`` accepts the payload
(request id ``c20``) and blocks in the model after touching MARKER, so the parent can
SIGKILL it mid-task. ``... recover force|wait`` starts a predictor on the same data
folder with the bundled model, resumes the task (at once with ``force``, as
``atomic-usage tasks recover --force`` does, or after the dead lease runs out with
``wait``) and prints the task as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from atomic_usage import Settings
from atomic_usage.engine.predictor import UsagePredictor
from atomic_usage.models.artifact import load_model
from atomic_usage.models.base import Forecaster


class Blocking(Forecaster):
    """Touches a marker file, then sleeps: a task that is mid-inference when killed."""

    name = "blocking"

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def forecast_arrays(self, histories: Sequence[np.ndarray], horizon: int, bounded: np.ndarray) -> np.ndarray:
        Path(self.marker).touch()
        time.sleep(600)
        raise AssertionError("the test should have killed this process")


def main(data_dir: str, payload_path: str, mode: str, arg: str) -> None:
    settings = Settings(data_dir=Path(data_dir), workers=1)
    payload = json.loads(Path(payload_path).read_text())
    if mode == "serve":
        with UsagePredictor(settings, model=Blocking(arg), recover=False) as p:
            p.process(payload, request_id="c20")
        return
    with UsagePredictor(settings, model=load_model(None), recover=(arg == "wait")) as p:
        if arg == "force":
            p.recover(force=True)
        deadline = time.monotonic() + 120
        task = p.find_task("c20")
        while task["status"] not in ("done", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
            task = p.find_task("c20")
        print(json.dumps(task))


if __name__ == "__main__":
    main(*sys.argv[1:5])
