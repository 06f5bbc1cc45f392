"""Settings, read once from the environment and validated.

Every variable uses the ``ATOMIC_`` prefix, except ``SKIP_PERSISTENCE`` and
``LOG_LEVEL``, which keep the names of the first description. A bad value
raises :class:`~atomic_usage.errors.ConfigError` naming the variable.
Precedence is CLI flag > environment > default.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from .errors import ConfigError

__all__ = [
    "DEFAULT_BATCH_MAX_SIZE",
    "DEFAULT_BATCH_MAX_WAIT_S",
    "DEFAULT_GAUGE_STEPS",
    "DEFAULT_HORIZON",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_RECORDS",
    "DEFAULT_TASK_KEEP_S",
    "DEFAULT_THRESHOLDS",
    "MAX_HORIZON",
    "Settings",
    "default_data_dir",
    "validate_horizon",
]

DEFAULT_HORIZON: Final = 12
"""Steps forecast by ``process()`` when the caller names none (12 × 5 min = 1 h)."""

MAX_HORIZON: Final = 288
"""Steps any forecast may ask for at most (288 × 5 min = 24 h), in ``process()``, the HTTP
service, ``ATOMIC_HORIZON`` and every CLI ``--horizon``: the long network's reach and
UsageBench's longest horizon; past it the forecast would only hold its last value."""

DEFAULT_THRESHOLDS: Final = (90.0, 100.0)
"""Percent levels whose crossing time ``process()`` reports."""

DEFAULT_TASK_KEEP_S: Final = 7 * 24 * 3600.0
"""Seconds a finished task and its results are kept: a week, as long as the history."""

DEFAULT_GAUGE_STEPS: Final = (1, 3, 6, 12, 24, 72, 144, 288)
"""Forecast steps the service exports as per-machine gauges: 5 min to 24 h ahead."""

DEFAULT_BATCH_MAX_SIZE: Final = 256
"""Records the engine gathers into one batch at most."""

DEFAULT_BATCH_MAX_WAIT_S: Final = 0.005
"""Seconds the engine waits for a batch to fill before running it."""

DEFAULT_HISTORY_LIMIT: Final = 2016
"""Observations kept per machine and metric for inference (7 days of 5-minute steps)."""

DEFAULT_MAX_RECORDS: Final = 10_000
"""Records one ``process()`` payload may hold at most (more: HTTP 413)."""

DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
"""Bytes one HTTP request body may hold at most (more: HTTP 413)."""

_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SYNC_MODES: Final = ("FULL", "NORMAL")
_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off", "")

T = TypeVar("T")


def default_data_dir() -> Path:
    """The per-user data folder used when ``ATOMIC_DATA_DIR`` is not set."""
    import platformdirs

    return Path(platformdirs.user_data_dir("atomic-usage", appauthor=False))


def validate_horizon(value: object) -> str | None:
    """What is wrong with ``value`` as a horizon, or None when it is one.

    The one check and message behind every horizon limit (see :data:`MAX_HORIZON`); each
    caller wraps the message in its own error (a record error, a CLI flag, a variable).

    >>> validate_horizon(12) is None
    True
    >>> validate_horizon(289)
    'must be a whole number of steps from 1 to 288 (a day of 5-minute steps), not 289'
    """
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if whole and 1 <= int(value) <= MAX_HORIZON:  # type: ignore[call-overload]
        return None
    shown = int(value) if whole else value  # type: ignore[call-overload]
    return f"must be a whole number of steps from 1 to {MAX_HORIZON} (a day of 5-minute steps), not {shown!r}"


def _bool(name: str, raw: str) -> bool:
    v = raw.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off.", name=name)


def _int(name: str, raw: str, *, minimum: int) -> int:
    try:
        v = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number; set e.g. {name}={minimum}.", name=name) from None
    if v < minimum:
        raise ConfigError(f"{name}={raw!r} is below {minimum}; set a value of at least {minimum}.", name=name)
    return v


def _horizon(name: str, raw: str) -> int:
    """``raw`` as a horizon; a word, a fraction or a number out of range gets the horizon's one message."""
    try:
        v: int | str = int(raw)
    except ValueError:
        v = raw
    problem = validate_horizon(v)
    if problem is not None:
        raise ConfigError(f"{name}={raw!r} {problem}; set e.g. {name}={DEFAULT_HORIZON}.", name=name)
    return int(v)


def _float(name: str, raw: str, *, minimum: float) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number; set e.g. {name}={minimum}.", name=name) from None
    if not v >= minimum or v != v or v == float("inf"):
        raise ConfigError(f"{name}={raw!r} must be a finite number of at least {minimum}.", name=name)
    return v


def _thresholds(name: str, raw: str) -> tuple[float, ...]:
    try:
        vals = tuple(sorted({float(x) for x in raw.split(",") if x.strip()}))
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a comma-separated list of percents, e.g. 90,100.", name=name
        ) from None
    if not vals or any(not 0 < v <= 100 for v in vals):
        raise ConfigError(f"{name}={raw!r} must list percents in (0, 100], e.g. 90,100.", name=name)
    return vals


def _gauge_steps(name: str, raw: str) -> tuple[int, ...]:
    if raw.strip().lower() == "none":
        return ()
    try:
        vals = tuple(sorted({int(x) for x in raw.split(",") if x.strip()}))
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a comma-separated list of forecast steps, e.g. 1,12,288, or none.", name=name
        ) from None
    if not vals or any(not 1 <= v <= MAX_HORIZON for v in vals):
        raise ConfigError(
            f"{name}={raw!r} must list forecast steps from 1 to {MAX_HORIZON}, e.g. 1,12,288, or be none.", name=name
        )
    return vals


def _tokens(name: str, raw: str) -> tuple[str, ...]:
    toks = tuple(dict.fromkeys(t.strip() for t in raw.split(",") if t.strip()))
    if any(len(t) < 16 for t in toks):
        raise ConfigError(
            f"{name} holds a token shorter than 16 characters; use long random tokens, "
            "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`.",
            name=name,
        )
    return toks


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    v = raw.strip().upper()
    if v not in choices:
        raise ConfigError(f"{name}={raw!r} is not one of {', '.join(choices)}.", name=name)
    return v


@dataclasses.dataclass(frozen=True)
class Settings:
    """Run-time settings. Build with :meth:`from_env`; override with :meth:`replace`.

    Attributes:
        data_dir: where the store, keyring and logs live (``ATOMIC_DATA_DIR``).
        skip_persistence: keep everything in memory only (``SKIP_PERSISTENCE``).
        log_level: console and file log level (``LOG_LEVEL``).
        model_dir: a model folder to serve instead of the bundled one (``ATOMIC_MODEL_DIR``).
        horizon: steps forecast by ``process()`` (``ATOMIC_HORIZON``).
        thresholds: percent levels whose crossing time is reported (``ATOMIC_THRESHOLDS``).
        gauge_steps: forecast steps the service exports per machine as ``atomic_forecast_value``
            (``ATOMIC_GAUGE_STEPS``; ``none`` exports none, keeping the time-to-threshold and
            origin gauges): each step is 9 series per machine, so a large fleet exports fewer.
        history_limit: observations kept per machine and metric (``ATOMIC_HISTORY_LIMIT``).
        task_keep_s: seconds a done or failed task and its results are kept in the store after it
            finished (``ATOMIC_TASK_KEEP_S``); its ``Idempotency-Key`` is remembered as long.
            Older ones are deleted at start and every 10 minutes, so the store stops growing.
        batch_max_size: records per engine batch at most (``ATOMIC_BATCH_MAX_SIZE``).
        batch_max_wait_s: seconds a batch waits to fill (``ATOMIC_BATCH_MAX_WAIT_S``).
        workers: engine workers; 0 means one per core (``ATOMIC_WORKERS``).
        sqlite_synchronous: ``FULL`` (default) or ``NORMAL`` (``ATOMIC_SQLITE_SYNCHRONOUS``).
        key: a base64 key used instead of a keyring file (``ATOMIC_KEY``).
        keyring_path: the keyring file; None means ``data_dir/keyring.json`` (``ATOMIC_KEYRING``).
        wait_s: how long ``process()`` waits for a task run by another caller (``ATOMIC_WAIT_S``).
        max_records: records one payload may hold (``ATOMIC_MAX_RECORDS``).
        api_tokens: bearer tokens the HTTP service accepts, comma-separated (``ATOMIC_API_TOKENS``).
        api_tokens_file: a file of SHA-256 token hashes, one ``sha256:<hex>`` a line
            (``ATOMIC_API_TOKENS_FILE``); tokens kept on disk are stored only hashed.
        max_body_bytes: bytes one HTTP request body may hold (``ATOMIC_MAX_BODY_BYTES``).
        open_metrics: serve /metrics, /healthz and /readyz without a token (``ATOMIC_OPEN_METRICS``).
        open_health: serve /healthz and /readyz without a token, /metrics still with one
            (``ATOMIC_OPEN_HEALTH``): for probes that cannot send one; health tells nothing else.
        processes: engine processes sharing the store at once (``ATOMIC_PROCESSES``; ``serve
            --processes``). Above 1, each process logs the observations it accepts and reads
            the others' into its in-memory history before it forecasts.
        process_stall_s: under ``serve --processes``, seconds a serving process may go without
            its event loop ticking before the supervisor kills and replaces it
            (``ATOMIC_PROCESS_STALL_S``): a stopped or hung process would otherwise keep its
            share of new connections and never answer them.
    """

    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    skip_persistence: bool = False
    log_level: str = "INFO"
    model_dir: Path | None = None
    horizon: int = DEFAULT_HORIZON
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    gauge_steps: tuple[int, ...] = DEFAULT_GAUGE_STEPS
    history_limit: int = DEFAULT_HISTORY_LIMIT
    task_keep_s: float = DEFAULT_TASK_KEEP_S
    batch_max_size: int = DEFAULT_BATCH_MAX_SIZE
    batch_max_wait_s: float = DEFAULT_BATCH_MAX_WAIT_S
    workers: int = 0
    sqlite_synchronous: str = "FULL"
    key: str | None = dataclasses.field(default=None, repr=False)
    keyring_path: Path | None = None
    wait_s: float = 60.0
    max_records: int = DEFAULT_MAX_RECORDS
    api_tokens: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    api_tokens_file: Path | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    open_metrics: bool = False
    open_health: bool = False
    processes: int = 1
    process_stall_s: float = 30.0

    def __post_init__(self) -> None:
        # Accept str paths from Python callers; the rest of the code relies on Path.
        for name in ("data_dir", "model_dir", "keyring_path"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value).expanduser())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads the settings from ``environ`` (default ``os.environ``).

        Raises:
            ConfigError: a variable has a bad value; the message names it.

        >>> Settings.from_env({"ATOMIC_HORIZON": "24"}).horizon
        24
        """
        env = os.environ if environ is None else environ
        kw: dict[str, Any] = {}

        def get(name: str, conv: Callable[[str, str], T], field: str) -> None:
            raw = env.get(name)
            if raw is not None:
                kw[field] = conv(name, raw)

        get("ATOMIC_DATA_DIR", lambda n, r: Path(r).expanduser(), "data_dir")
        get("SKIP_PERSISTENCE", _bool, "skip_persistence")
        get("LOG_LEVEL", lambda n, r: _choice(n, r, _LOG_LEVELS), "log_level")
        get("ATOMIC_MODEL_DIR", lambda n, r: Path(r).expanduser() if r else None, "model_dir")
        get("ATOMIC_HORIZON", _horizon, "horizon")
        get("ATOMIC_THRESHOLDS", _thresholds, "thresholds")
        get("ATOMIC_GAUGE_STEPS", _gauge_steps, "gauge_steps")
        get("ATOMIC_HISTORY_LIMIT", lambda n, r: _int(n, r, minimum=2), "history_limit")
        get("ATOMIC_TASK_KEEP_S", lambda n, r: _float(n, r, minimum=60.0), "task_keep_s")
        get("ATOMIC_BATCH_MAX_SIZE", lambda n, r: _int(n, r, minimum=1), "batch_max_size")
        get("ATOMIC_BATCH_MAX_WAIT_S", lambda n, r: _float(n, r, minimum=0.0), "batch_max_wait_s")
        get("ATOMIC_WORKERS", lambda n, r: _int(n, r, minimum=0), "workers")
        get("ATOMIC_SQLITE_SYNCHRONOUS", lambda n, r: _choice(n, r, _SYNC_MODES), "sqlite_synchronous")
        get("ATOMIC_KEY", lambda n, r: r or None, "key")
        get("ATOMIC_KEYRING", lambda n, r: Path(r).expanduser() if r else None, "keyring_path")
        get("ATOMIC_WAIT_S", lambda n, r: _float(n, r, minimum=0.0), "wait_s")
        get("ATOMIC_MAX_RECORDS", lambda n, r: _int(n, r, minimum=1), "max_records")
        get("ATOMIC_API_TOKENS", _tokens, "api_tokens")
        get("ATOMIC_API_TOKENS_FILE", lambda n, r: Path(r).expanduser() if r else None, "api_tokens_file")
        get("ATOMIC_MAX_BODY_BYTES", lambda n, r: _int(n, r, minimum=1024), "max_body_bytes")
        get("ATOMIC_OPEN_METRICS", _bool, "open_metrics")
        get("ATOMIC_OPEN_HEALTH", _bool, "open_health")
        get("ATOMIC_PROCESSES", lambda n, r: _int(n, r, minimum=1), "processes")
        get("ATOMIC_PROCESS_STALL_S", lambda n, r: _float(n, r, minimum=1.0), "process_stall_s")
        return cls(**kw)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (the settings themselves are frozen)."""
        return dataclasses.replace(self, **changes)

    @property
    def n_workers(self) -> int:
        """Workers to start: ``workers``, or one per core when it is 0."""
        return self.workers or (os.cpu_count() or 1)
