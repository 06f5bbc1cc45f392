"""The exception tree of atomic_usage.

Every error the library raises on purpose derives from :class:`AtomicError`,
with one branch per layer. Where a stdlib exception has the same meaning the
class inherits it too, so ``except ValueError`` keeps working::

    AtomicError
    ├── DataError
    │   ├── SchemaError(ValueError)        a column, field or type is wrong or missing
    │   ├── GapError(ValueError)           a series has no usable observations
    │   └── PayloadError(ValueError)       a process() payload has bad records (lists them all)
    │       ├── PayloadSyntaxError         the body is not JSON at all (HTTP 400)
    │       ├── PayloadTooLarge            too many records, or too many bytes (HTTP 413)
    │       └── UnsupportedMediaType       the body is declared as something other than JSON (HTTP 415)
    ├── ModelError
    │   ├── NotFittedError(ValueError, AttributeError)
    │   └── ArtifactError(OSError)         a model folder is missing, unreadable or inconsistent
    ├── EngineError
    │   ├── QueueFullError                 the engine refuses work it cannot hold
    │   ├── TaskNotFound(KeyError)
    │   ├── IdempotencyError(ValueError)   a request id reused with another payload
    │   ├── WorkerCrashed                  a worker died while running a record
    │   ├── StoreError                     the SQLite store failed
    │   └── ClusterError                   a Dask cluster cannot be reached, started or finish a job
    ├── SecurityError
    │   ├── UnknownKeyError(KeyError)      an envelope names a key the keyring lacks
    │   ├── IntegrityError(ValueError)     an envelope was altered or opened with the wrong key
    │   ├── KeyringError                   the keyring file is missing, malformed or too open
    │   └── AuthError                      a service request had no valid bearer token (HTTP 401)
    └── ConfigError(ValueError)            an environment variable or setting has a bad value

Messages name what is wrong, show the offending value, and say what to do.
Exceptions carry their context as attributes (``path``, ``task_id``, ``key_id``...).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArtifactError",
    "AtomicError",
    "AuthError",
    "ClusterError",
    "ConfigError",
    "DataError",
    "EngineError",
    "GapError",
    "IdempotencyError",
    "IntegrityError",
    "KeyringError",
    "ModelError",
    "NotFittedError",
    "PayloadError",
    "PayloadSyntaxError",
    "PayloadTooLarge",
    "QueueFullError",
    "RecordError",
    "SchemaError",
    "SecurityError",
    "StoreError",
    "TaskNotFound",
    "UnknownKeyError",
    "UnsupportedMediaType",
    "WorkerCrashed",
]


class AtomicError(Exception):
    """Root of every error raised by atomic_usage on purpose.

    Every one pickles whole (to and from a Dask worker or a process pool): its message, type and
    attributes come back as they were. Exception's own pickling calls the class with its message,
    which is not what an error whose constructor builds the message takes (a PayloadError came
    back as "The payload has 136 bad fields: T; h; e; ...", its message read as the list).
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuilt, (type(self), self.args, dict(self.__dict__))


def _rebuilt(cls: type[AtomicError], args: tuple[Any, ...], state: dict[str, Any]) -> AtomicError:
    """An error as pickled: made without its constructor, given its args and attributes back."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


# --- data -----------------------------------------------------------------
class DataError(AtomicError):
    """Input data cannot be used as it is."""


class SchemaError(DataError, ValueError):
    """A file or frame lacks a column, or a column has the wrong type.

    Attributes:
        path: the file concerned, when there is one.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class GapError(DataError, ValueError):
    """A series has no usable observations (empty, all missing)."""

    def __init__(self, message: str, *, series_id: str | None = None) -> None:
        super().__init__(message)
        self.series_id = series_id


class RecordError:
    """One problem with one record of a payload: where it is and what is wrong.

    Attributes:
        record_id: the record's id as given back, or None.
        id_escaped: whether ``record_id`` is already escaped to printable ASCII (backslash
            escapes, :func:`~atomic_usage.engine.payload.escaped`), as an id holding a refused
            character is given back; ``str()`` then shows ``ascii()`` of the id, so escaped once.
    """

    __slots__ = ("field", "id_escaped", "index", "message", "record_id")

    def __init__(
        self, index: int, field: str, message: str, record_id: str | None = None, *, id_escaped: bool = False
    ) -> None:
        self.index = index
        self.field = field
        self.message = message
        self.record_id = record_id
        self.id_escaped = id_escaped

    def as_dict(self) -> dict[str, Any]:
        """The error as a JSON-ready mapping (used by the CLI and the HTTP service)."""
        return {"index": self.index, "id": self.record_id, "field": self.field, "message": self.message}

    def __str__(self) -> str:
        who = "the request" if self.index < 0 else f"record {self.index}"
        if self.record_id is not None:
            # An escaped id is shown as the messages show a value, ascii() of the id itself: a
            # repr of the escaped text would escape it twice (its backslashes doubled).
            rid = self.record_id.encode("ascii").decode("unicode_escape") if self.id_escaped else self.record_id
            who += f" (id {ascii(rid) if self.id_escaped else repr(rid)})"
        return f"{who}, field {self.field!r}: {self.message}"

    def __repr__(self) -> str:
        escaped = ", id_escaped=True" if self.id_escaped else ""
        return f"RecordError({self.index}, {self.field!r}, {self.message!r}, record_id={self.record_id!r}{escaped})"

    def __reduce__(self) -> tuple[Any, ...]:
        # With __slots__ and no __dict__, only protocol 2 and up could pickle it: this serves all.
        return _record_error, (self.index, self.field, self.message, self.record_id, self.id_escaped)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecordError) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash((self.index, self.field, self.message, self.record_id))


def _record_error(index: int, field: str, message: str, record_id: str | None, id_escaped: bool) -> RecordError:
    """A RecordError as pickled."""
    return RecordError(index, field, message, record_id, id_escaped=id_escaped)


class PayloadError(DataError, ValueError):
    """A ``process()`` payload has bad records; ``errors`` lists every one of them.

    Nothing from a payload that raises this is applied.
    """

    def __init__(self, errors: list[RecordError]) -> None:
        self.errors = list(errors)
        head = "; ".join(str(e) for e in self.errors[:5])
        k = len(self.errors) - 5
        more = f"; and {k} more bad field{'s' if k != 1 else ''} (each in .errors)" if k > 0 else ""
        n = len(self.errors)
        super().__init__(
            f"The payload has {n} bad field{'s' if n != 1 else ''}: {head}{more}; "
            f"fix {'them' if n != 1 else 'it'} and send the payload again (nothing from it was applied)."
        )


class PayloadSyntaxError(PayloadError):
    """A request body is not valid JSON (UTF-8); ``errors`` holds one entry saying where it breaks."""


class PayloadTooLarge(PayloadError):
    """A payload holds more records, or a request body more bytes, than allowed.

    The limits are ``ATOMIC_MAX_RECORDS`` and ``ATOMIC_MAX_BODY_BYTES``; nothing was applied.
    """


class UnsupportedMediaType(PayloadError):
    """A request body is declared (by its Content-Type) as something other than JSON in UTF-8;
    ``errors`` holds one entry naming the header. Nothing was read or applied."""


# --- models ---------------------------------------------------------------
class ModelError(AtomicError):
    """A model cannot be built, loaded or used."""


class NotFittedError(ModelError, ValueError, AttributeError):
    """A forecaster was asked to predict before ``fit``."""


class ArtifactError(ModelError, OSError):
    """A model folder is missing, unreadable or inconsistent.

    Attributes:
        path: the model folder.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


# --- engine ---------------------------------------------------------------
class EngineError(AtomicError):
    """The engine cannot accept or finish work."""


class QueueFullError(EngineError):
    """The engine's queue is full; retry later."""


class TaskNotFound(EngineError, KeyError):
    """No task has this task id, or no task was accepted under this request id.

    Attributes:
        task_id: the task id looked up, or None when the lookup was by request id.
        request_id: the request id (Idempotency-Key) looked up, or None.
    """

    def __init__(self, task_id: str | None = None, *, request_id: str | None = None) -> None:
        if request_id is not None:
            msg = (
                f"No task was accepted under the request id {request_id!r} (the Idempotency-Key of a predict call); "
                "list tasks and their request ids with `atomic-usage tasks list`."
            )
        else:
            msg = f"No task has the id {task_id!r}; list tasks with `atomic-usage tasks list`."
        super().__init__(msg)
        self.task_id = task_id
        self.request_id = request_id

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class IdempotencyError(EngineError, ValueError):
    """A request id was reused with a different payload."""

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"The request id {request_id!r} was already used with a different payload; "
            "send a new request id for new data."
        )
        self.request_id = request_id


class WorkerCrashed(EngineError):
    """A worker died while running a batch."""


class StoreError(EngineError):
    """The persistent store failed (disk full, corrupt database, locked too long)."""


class ClusterError(EngineError):
    """A Dask cluster cannot be started or reached, or it could not finish a job.

    Attributes:
        address: the scheduler address (or ``local:N``) concerned, when there is one.
    """

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address


# --- security -------------------------------------------------------------
class SecurityError(AtomicError):
    """Sealing, opening or key management failed."""


class UnknownKeyError(SecurityError, KeyError):
    """An envelope names a key id that the keyring does not hold."""

    def __init__(self, key_id: str) -> None:
        super().__init__(
            f"The keyring has no key with id {key_id!r}; load the keyring that sealed it "
            "or re-seal old results before retiring keys."
        )
        self.key_id = key_id

    def __str__(self) -> str:
        return str(self.args[0])


class IntegrityError(SecurityError, ValueError):
    """An envelope was altered, bound to other data, or opened with the wrong key."""


class KeyringError(SecurityError):
    """The keyring file is missing, malformed, or readable by others."""


class AuthError(SecurityError):
    """A service request carried no bearer token, or one that is not configured.

    The message deliberately says nothing about which of the two it was.
    """

    def __init__(self, message: str = "A valid bearer token is required.") -> None:
        super().__init__(message)


# --- config ---------------------------------------------------------------
class ConfigError(AtomicError, ValueError):
    """A setting has a bad value.

    Attributes:
        name: the environment variable or setting.
    """

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name
