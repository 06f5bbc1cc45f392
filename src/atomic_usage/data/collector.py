"""A local collector: samples this machine's CPU, memory and storage into a history file.

A user without Prometheus starts building history at once with ``atomic-usage collect``.
Samples go to ``<data_dir>/collector.csv`` in the wide contract format. Each sample is
one line written with one ``write`` on a file opened for appending, then synced, so
readers and concurrent collectors never see half a line from a finished write; a line
cut short by a crash (no final newline) is ignored when reading.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pandas as pd

from .._types import DEFAULT_METRICS
from ..errors import DataError
from .validation import validate_wide

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "COLLECTOR_FILE",
    "append_sample",
    "collect",
    "collect_once",
    "collector_path",
    "read_collected",
    "require_psutil",
]

COLLECTOR_FILE: Final = "collector.csv"
"""Name of the history file under the data folder."""

_COLUMNS: Final = ("id", "timestamp", *DEFAULT_METRICS)
_log = logging.getLogger("atomic_usage.data")


def require_psutil() -> None:
    """Raises the DataError naming the extra when psutil is missing, before anything is announced."""
    _psutil()


def _psutil() -> Any:
    try:
        import psutil
    except ImportError:  # pragma: no cover
        raise DataError("The collector needs psutil; install it: pip install 'atomic-usage[report]'.") from None
    return psutil


def collector_path(settings: Settings) -> Path:
    """The history file of the collector: ``<data_dir>/collector.csv``."""
    return Path(settings.data_dir) / COLLECTOR_FILE


def collect_once(
    *, mount: str = "/", machine_id: str | None = None, cpu_interval_s: float | None = 1.0
) -> dict[str, Any]:
    """Samples this machine now.

    Args:
        mount: the mount point whose file system ``storageUsage`` measures.
        machine_id: the id written (default: the host name).
        cpu_interval_s: seconds over which CPU use is measured; ``None`` measures since
            the previous call in this process (the collector loop uses that, so each
            sample averages its whole interval).

    Returns:
        ``{"id", "timestamp" (ISO 8601 UTC), "cpuLoad", "memoryUsage", "storageUsage"}``,
        the metrics in percent.

    Raises:
        DataError: the mount point does not exist.
    """
    ps = _psutil()
    cpu = float(ps.cpu_percent(interval=cpu_interval_s))
    mem = ps.virtual_memory()
    try:
        disk = ps.disk_usage(mount)
    except (FileNotFoundError, PermissionError) as exc:
        raise DataError(
            f"Cannot measure storage at mount point {mount!r} ({type(exc).__name__}); "
            "give an existing mount point with --mount."
        ) from None
    # As in the Prometheus recipe: 100 * (1 - available / total), counting reclaimable memory as free.
    return {
        "id": machine_id or socket.gethostname(),
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpuLoad": round(cpu, 3),
        "memoryUsage": round(100.0 * (1.0 - mem.available / mem.total), 3),
        "storageUsage": round(100.0 * (1.0 - disk.free / disk.total), 3) if disk.total else 0.0,
    }


def append_sample(path: str | Path, sample: Mapping[str, Any]) -> None:
    """Appends one sample as a CSV line (writing the header first when the file is new).

    The line goes out in one ``write`` to a file opened with ``O_APPEND``, then ``fsync``. A new
    file comes into being with its header already in it (written aside, then hard-linked into
    place, which fails if another writer got there first), so no writer's line can precede it.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    pd.DataFrame([{c: sample.get(c) for c in _COLUMNS}]).to_csv(buf, index=False, header=False)
    line = buf.getvalue().encode()
    if not p.exists():
        tmp = p.with_name(f".{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write((",".join(_COLUMNS) + "\n").encode())
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_collected(settings: Settings) -> pd.DataFrame:
    """Reads the collector's history as the wide frame.

    Returns:
        ``id,timestamp,cpuLoad,memoryUsage,storageUsage``, one row per sample.

    Raises:
        DataError: nothing was collected yet (the message says how to start).
    """
    p = collector_path(settings)
    if not p.is_file():
        raise DataError(
            f"No collected history at {p}; start collecting with `atomic-usage collect --interval 5m` "
            "(or set ATOMIC_DATA_DIR to where it ran)."
        )
    text = p.read_text()
    complete = text[: text.rfind("\n") + 1]  # a crash may leave a last line without its newline
    df = pd.read_csv(io.StringIO(complete), dtype={"id": str})
    if df.empty:
        raise DataError(f"{p} holds no samples yet; let `atomic-usage collect` run for a while.")
    return validate_wide(df, path=str(p))


def collect(
    settings: Settings,
    *,
    interval_s: float = 300.0,
    count: int | None = None,
    mount: str = "/",
    machine_id: str | None = None,
    on_sample: Callable[[dict[str, Any]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Samples this machine every ``interval_s`` seconds into the history file.

    The first sample is taken at once (CPU measured over one second); each later one
    measures CPU over its whole interval. Stop it with Ctrl-C (KeyboardInterrupt), which
    leaves the file whole, or give ``count``.

    Args:
        settings: where the history file lives (``data_dir``).
        interval_s: seconds between samples.
        count: stop after this many samples (default: run until interrupted).
        mount: the mount point of ``storageUsage``.
        machine_id: the id written (default: the host name).
        on_sample: called with each sample after it is written.
        sleep: waits between samples; clock: monotonic seconds (tests pass fakes).

    Returns:
        The number of samples written.
    """
    path = collector_path(settings)
    written = 0
    next_t = 0.0
    while count is None or written < count:
        sample = collect_once(mount=mount, machine_id=machine_id, cpu_interval_s=1.0 if not written else None)
        append_sample(path, sample)
        written += 1
        if on_sample is not None:
            on_sample(sample)
        if count is not None and written >= count:
            break
        # Keep to the schedule: a slow sample shortens the next wait instead of drifting.
        # The schedule starts after the first sample, whose CPU reading takes a second.
        next_t = (clock() if written == 1 else next_t) + interval_s
        sleep(max(next_t - clock(), 0.0))
    _log.info("collector: %d samples -> %s", written, path)
    return written
