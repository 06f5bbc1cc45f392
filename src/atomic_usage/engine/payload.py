"""The ``process()`` payload: validation of every record, all errors gathered at once.

A payload is ``{"usageData": [record, ...]}``. A record is one observation of one machine::

    {"id": "web-1", "cpuLoad": 30.5, "memoryUsage": 70, "storageUsage": 20,
     "timestamp": "2026-01-05T10:00:00Z"}        # timestamp optional: receive time

Rules (the README's "Data rules"): ``id`` is a non-empty string of printable text, without
control characters (C0, DEL, C1), line or paragraph separators or bidirectional controls
(:func:`validate_printable`; a JSON integer is taken as its decimal string); each metric is
a JSON number in [0, 100], or null/absent for "not measured"; at least one metric per
record; strings, NaN and infinities are refused, not coerced; unknown fields are refused; a
timestamp is ISO 8601 (no offset = UTC) or epoch seconds. Records of one id at one time (or
in one 5-minute step) are averaged by the history, as repeated timestamps in a file are, so
the result does not depend on their order.
Any bad record makes the whole payload fail with a :class:`~atomic_usage.errors.PayloadError`
listing every bad field by index; nothing from it is applied.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .._types import DEFAULT_METRICS
from ..errors import PayloadError, PayloadTooLarge, RecordError

__all__ = ["MAX_RECORDS", "Observation", "escaped", "parse_payload", "shown", "validate_printable"]

MAX_RECORDS = 100_000
"""Records one payload may hold at most."""

_ALLOWED = frozenset({"id", "timestamp", *DEFAULT_METRICS})


@dataclasses.dataclass(frozen=True)
class Observation:
    """One validated record.

    Attributes:
        index: its position in the payload.
        id: the machine id.
        ts: epoch seconds (UTC).
        values: metric -> value for the metrics measured (no None, no NaN).
        explicit_time: whether the payload gave the timestamp.
    """

    index: int
    id: str
    ts: float
    values: dict[str, float]
    explicit_time: bool


MAX_FUTURE_S = 86_400.0
"""How far past the receive time a record's timestamp may lie (clock skew), in seconds."""

MAX_ID_LENGTH = 256
"""Characters a machine id may have at most."""


def _parse_ts(raw: Any, received: float) -> float:
    ts = _to_epoch(raw)
    if ts > received + MAX_FUTURE_S:
        raise ValueError(
            f"{raw!r} lies more than a day after the receive time; send epoch seconds (not "
            "milliseconds) or an ISO 8601 time that has happened"
        )
    return ts


def _to_epoch(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("is a boolean, not a timestamp")
    if isinstance(raw, int | float):
        try:
            value = float(raw)
        except OverflowError:
            raise ValueError("is too large to be an epoch time; send seconds since 1970") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{raw!r} is not a valid epoch time; send seconds since 1970")
        return value
    if isinstance(raw, str):
        s = raw.strip()
        if s.endswith("Z"):
            s = s[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise ValueError(f"{raw!r} is not an ISO 8601 timestamp (e.g. 2026-01-05T10:00:00Z)") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        if dt.year < 1970:
            raise ValueError(f"{raw!r} is before 1970; send the time the sample was taken")
        return dt.timestamp()
    raise ValueError(f"must be an ISO 8601 string or epoch seconds, not {type(raw).__name__}")


_REFUSED_CLASSES: tuple[tuple[str, str], ...] = (
    ("control character", "\x00-\x1f\x7f-\x9f"),
    ("line or paragraph separator", "\u2028\u2029"),
    ("bidirectional control", "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"),
)
"""The characters refused in ids, by the name a message gives them (regex class contents).

Ids are stored, sent back, and written into Prometheus label values, logs and terminals. The C0
controls, DEL and the C1 controls: a NUL, a newline, an escape sequence or U+0085 NEXT LINE
there is a broken exposition or an injection, not a machine's name. The line and paragraph
separators U+2028/U+2029: line breaks to many readers. The bidirectional controls: the
embeddings, overrides and isolates U+202A-U+202E and U+2066-U+2069 and the marks U+061C,
U+200E, U+200F reorder the text shown around them, so two ids that look alike differ."""

_CONTROL = re.compile("[" + "".join(chars for _, chars in _REFUSED_CLASSES) + "]")
"""Any character of :data:`_REFUSED_CLASSES`."""

_REFUSED = (
    "no control characters U+0000 to U+001F or U+007F to U+009F, line or paragraph separators "
    "U+2028/U+2029, or bidirectional controls U+061C, U+200E, U+200F, U+202A to U+202E and U+2066 to U+2069"
)
"""What :func:`validate_printable`'s message says an id must not hold."""


def _kind(char: str) -> str:
    """How a message names one refused character (its class in :data:`_REFUSED_CLASSES`)."""
    return next(name for name, chars in _REFUSED_CLASSES if re.fullmatch(f"[{chars}]", char))


def _is_text(s: str) -> bool:
    """Whether ``s`` is valid Unicode text (a lone UTF-16 surrogate, which JSON's ``\\ud800``
    escape can make, is not: it cannot be stored or sent back)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(value: Any, width: int = 40) -> str:
    """A bad value as an error message shows it: escaped to ASCII, cut to ``width`` characters.

    >>> print(shown("web" + chr(0)), shown("x" * 50, 10))
    'web\\x00' 'xxxxxx...
    """
    text = ascii(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def escaped(value: str) -> str:
    """An id as errors give it back when it holds a refused character: printable ASCII.

    Backslash escapes, as in the messages (:func:`shown`) without their quotes and uncut up
    to :data:`MAX_ID_LENGTH` characters: ``\\x00``, ``\\n``, ``\\xe9``, ``\\u202e``, and a
    backslash doubled. A client finds its record by escaping its id the same way (Python:
    ``rid.encode("unicode_escape").decode("ascii")``); a longer id is cut, ending in ``...``.

    >>> print(escaped("web" + chr(0) + "1"), escaped("r" + chr(0x202E)))
    web\\x001 r\\u202e
    """
    if len(value) > MAX_ID_LENGTH:
        return value[:MAX_ID_LENGTH].encode("unicode_escape").decode("ascii") + "..."
    return value.encode("unicode_escape").decode("ascii")


def validate_printable(value: str, *, what: str = "the machine's id") -> str | None:
    """What is wrong with an id holding a control or other invisible character, or None.

    Refused: the C0 and C1 controls and DEL (U+0000 to U+001F, U+007F to U+009F), the line and
    paragraph separators (U+2028, U+2029) and the bidirectional controls (U+061C, U+200E,
    U+200F, U+202A to U+202E, U+2066 to U+2069).

    Args:
        value: the id.
        what: how the message names it.

    Returns:
        The problem, worded to follow a field name (as :func:`~atomic_usage.config.validate_horizon`'s).

    >>> validate_printable("web-1") is None
    True
    >>> print(validate_printable("web" + chr(0) + "1").split(";")[0])
    holds the control character U+0000 at position 3 of 'web\\x001'
    """
    found = _CONTROL.search(value)
    if found is None:
        return None
    char = found.group()
    return (
        f"holds the {_kind(char)} U+{ord(char):04X} at position {found.start()} of {shown(value)}; "
        f"send {what} as printable text ({_REFUSED})"
    )


def parse_payload(payload: Any, *, now: float | None = None, max_records: int = MAX_RECORDS) -> list[Observation]:
    """Validates a payload and returns its observations, or raises with every problem listed.

    Args:
        payload: the decoded JSON payload.
        now: receive time in epoch seconds for records without a timestamp (default: now).
        max_records: records allowed at most.

    Raises:
        PayloadError: the payload or any record is bad; ``errors`` lists each one.
        PayloadTooLarge: the payload holds more than ``max_records`` records.

    >>> [o.values for o in parse_payload({"usageData": [{"id": "a", "cpuLoad": 30}]}, now=0)]
    [{'cpuLoad': 30.0}]
    """
    received = datetime.now(UTC).timestamp() if now is None else now
    if not isinstance(payload, Mapping):
        raise PayloadError(
            [
                RecordError(
                    -1,
                    "payload",
                    f"must be a JSON object with a usageData list, not {type(payload).__name__}",
                )
            ]
        )
    extra = sorted(set(payload) - {"usageData"})
    errors: list[RecordError] = [
        RecordError(-1, k, "is not a known field; the payload holds only usageData") for k in extra
    ]
    data = payload.get("usageData")
    if not isinstance(data, list):
        errors.append(RecordError(-1, "usageData", "is missing or not a list of records"))
        raise PayloadError(errors)
    if not data:
        errors.append(RecordError(-1, "usageData", "is empty; send at least one record"))
    if len(data) > max_records:
        errors.append(
            RecordError(
                -1,
                "usageData",
                f"holds {len(data)} records, more than the {max_records} allowed; split the payload",
            )
        )
        raise PayloadTooLarge(errors)
    out: list[Observation] = []
    for i, rec in enumerate(data):
        if not isinstance(rec, Mapping):
            errors.append(RecordError(i, "record", f"must be an object, not {type(rec).__name__}"))
            continue
        rid_raw = rec.get("id")
        rid: str | None = None
        control = validate_printable(rid_raw) if isinstance(rid_raw, str) else None
        if control is not None:
            errors.append(RecordError(i, "id", control, escaped(str(rid_raw)), id_escaped=True))
        elif isinstance(rid_raw, str) and rid_raw.strip() and len(rid_raw) <= MAX_ID_LENGTH and _is_text(rid_raw):
            rid = rid_raw
        elif isinstance(rid_raw, int) and not isinstance(rid_raw, bool) and abs(rid_raw) < 10**64:
            rid = str(rid_raw)
        elif "id" not in rec or rid_raw is None:
            errors.append(RecordError(i, "id", "is missing; every record needs the machine's id"))
        else:
            what = f"a {type(rid_raw).__name__}" if isinstance(rid_raw, int | float | list | dict) else shown(rid_raw)
            errors.append(
                RecordError(
                    i, "id", f"must be a non-empty string of at most {MAX_ID_LENGTH} characters of text, not {what}"
                )
            )
        # The other errors of the record name its id too; one holding a refused character is
        # named escaped, as its id error gives it, so that the character is never sent back.
        refused = control is not None
        named = escaped(str(rid_raw)) if refused else rid
        for k in sorted(set(rec) - _ALLOWED):
            name = str(k) if _is_text(str(k)) and not _CONTROL.search(str(k)) else ascii(k)
            errors.append(
                RecordError(
                    i,
                    name,
                    "is not a known field; use id, timestamp, " + ", ".join(DEFAULT_METRICS),
                    named,
                    id_escaped=refused,
                )
            )
        values: dict[str, float] = {}
        for m in DEFAULT_METRICS:
            v = rec.get(m)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float):
                errors.append(
                    RecordError(i, m, f"must be a number, not {v!r} ({type(v).__name__})", named, id_escaped=refused)
                )
                continue
            try:
                v = float(v)
            except OverflowError:
                errors.append(RecordError(i, m, "is far outside 0 to 100 percent", named, id_escaped=refused))
                continue
            if not math.isfinite(v):
                errors.append(RecordError(i, m, f"must be finite, not {v!r}", named, id_escaped=refused))
            elif not 0 <= v <= 100:
                errors.append(RecordError(i, m, f"is {v!r}, outside 0 to 100 percent", named, id_escaped=refused))
            else:
                values[m] = float(v)
        if not values and not any(e.index == i and e.field in DEFAULT_METRICS for e in errors):
            errors.append(
                RecordError(
                    i,
                    "record",
                    "has no metric; give at least one of " + ", ".join(DEFAULT_METRICS),
                    named,
                    id_escaped=refused,
                )
            )
        explicit = rec.get("timestamp") is not None
        ts = received
        if explicit:
            try:
                ts = _parse_ts(rec["timestamp"], received)
            except ValueError as exc:
                errors.append(RecordError(i, "timestamp", str(exc), named, id_escaped=refused))
        if rid is not None:
            out.append(Observation(i, rid, ts, values, explicit))
    if errors:
        raise PayloadError(errors)
    return out
