"""The one table from library errors to HTTP statuses, and the handlers that apply it.

Every error response has the same body, :class:`ErrorBody`: a ``detail`` sentence and,
for payload errors, the per-record ``errors`` list exactly as ``process()`` raises it
(``{"index", "id", "field", "message"}``; ``index`` is -1 for the payload as a whole).
Unexpected errors give a 500 whose body says nothing about the cause; it is logged.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..config import validate_horizon
from ..errors import (
    AtomicError,
    AuthError,
    EngineError,
    IdempotencyError,
    PayloadError,
    PayloadSyntaxError,
    PayloadTooLarge,
    QueueFullError,
    RecordError,
    TaskNotFound,
    UnsupportedMediaType,
)

__all__ = [
    "ACCEPTED_MEDIA_TYPES",
    "ERROR_STATUS",
    "ErrorBody",
    "RecordErrorBody",
    "error_content",
    "error_headers",
    "error_responses",
    "horizon_detail",
    "install_handlers",
    "status_of",
]

_log = logging.getLogger("atomic_usage.service")

ERROR_STATUS: Final[tuple[tuple[type[BaseException], int, str], ...]] = (
    # Most specific first: the first matching row wins.
    (AuthError, 401, "A valid bearer token is required."),
    (PayloadSyntaxError, 400, "The request body is not valid JSON."),
    (PayloadTooLarge, 413, "The request is larger than this service allows; split it."),
    (UnsupportedMediaType, 415, "The request body must be JSON, sent as Content-Type: application/json."),
    (PayloadError, 422, "The payload has bad records; nothing from it was applied."),
    (IdempotencyError, 409, "This Idempotency-Key was already used with a different payload."),
    (TaskNotFound, 404, "No task has this task id, or none was accepted under this request id."),
    (QueueFullError, 503, "The engine is full; retry later with the same Idempotency-Key."),
    (EngineError, 503, "The engine could not finish the request; retry later with the same Idempotency-Key."),
    (AtomicError, 500, "Internal error; it was logged."),
)
"""``(error type, HTTP status, safe detail)``; anything not listed is a 500 with the last row's detail."""

ACCEPTED_MEDIA_TYPES: Final = "application/json, application/*+json"
"""The request body types ``POST /v1/predict`` takes, as its 415 answers say (``Accept-Post``)."""


class RecordErrorBody(BaseModel):
    """One problem with one record of a payload."""

    index: int = Field(description="Position of the record in usageData; -1 for the payload or request as a whole.")
    id: str | None = Field(description="The record's machine id, when it could be read.")
    field: str = Field(description="The field (or header, or query parameter) that is wrong.")
    message: str = Field(description="What is wrong and what to do about it.")


class ErrorBody(BaseModel):
    """The body of every error response."""

    detail: str = Field(description="One sentence saying what went wrong (never internal details).")
    errors: list[RecordErrorBody] = Field(
        default_factory=list, description="Every bad field, for payload errors (400, 413, 415, 422); else empty."
    )


def status_of(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and safe detail of an exception, from :data:`ERROR_STATUS`."""
    for kind, status, detail in ERROR_STATUS:
        if isinstance(exc, kind):
            return status, detail
    return 500, ERROR_STATUS[-1][2]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries (model and description) for these statuses."""
    described = {s: d for _, s, d in reversed(ERROR_STATUS)}
    described.setdefault(422, "A query parameter or header is out of range.")
    return {s: {"model": ErrorBody, "description": described.get(s, "Error.")} for s in statuses}


def error_headers(status: int) -> dict[str, str]:
    """The headers an error answer carries besides its body: the scheme a 401 wants, the body
    types a 415 would have taken (``Accept-Post``, as RFC 9110 section 15.5.16 suggests)."""
    if status == 401:
        return {"WWW-Authenticate": "Bearer"}
    if status == 415:
        return {"Accept-Post": ACCEPTED_MEDIA_TYPES}
    return {}


def _response(status: int, detail: str, errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    return JSONResponse(
        {"detail": detail, "errors": errors or []}, status_code=status, headers=error_headers(status) or None
    )


def error_content(exc: AtomicError, method: str, path: str) -> tuple[int, dict[str, Any]]:
    """The status and :class:`ErrorBody` content of one of our errors (5xx are logged here).

    Shared by the exception handler and the predict fast path, so both answer alike.
    """
    status, detail = status_of(exc)
    if isinstance(exc, PayloadError):
        bad_horizon = [e for e in exc.errors if e.index == -1 and e.field == "horizon"]
        if bad_horizon and len(bad_horizon) == len(exc.errors):
            # The records were fine: only the query parameter was not, so say that.
            detail = horizon_detail(bad_horizon[0].message)
        return status, {"detail": detail, "errors": [e.as_dict() for e in exc.errors]}
    if status >= 500:
        _log.error("%s %s failed: %s: %s", method, path, type(exc).__name__, exc)
    elif not isinstance(exc, AuthError):
        detail = str(exc)  # our own messages: they name the id and say what to do
    return status, {"detail": detail, "errors": []}


async def _atomic_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AtomicError)
    status, content = error_content(exc, request.method, request.url.path)
    return _response(status, content["detail"], content["errors"])


def horizon_detail(problem: str) -> str:
    """The ``detail`` of a 422 for a bad ``?horizon=``: the query parameter named, with
    :func:`~atomic_usage.config.validate_horizon`'s message, the one the CLI and process() give."""
    return f"The query parameter horizon is invalid: it {problem}; nothing was applied."


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for e in exc.errors():
        loc = tuple(e.get("loc") or ())
        if loc == ("query", "horizon"):
            # Not an integer at all (?horizon=abc): the horizon's own message, as for ?horizon=289.
            problem = validate_horizon(e.get("input")) or "must be a whole number of steps"
            errors.append(RecordError(-1, "horizon", problem).as_dict())
        else:
            errors.append(
                RecordError(-1, str(loc[-1]) if loc else "request", str(e.get("msg", "is invalid"))).as_dict()
            )
    if len(errors) == 1 and errors[0]["field"] == "horizon":
        return _response(422, horizon_detail(errors[0]["message"]), errors)
    return _response(422, "A query parameter or header is out of range.", errors)


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    _log.exception("%s %s failed unexpectedly", request.method, request.url.path)
    return _response(500, ERROR_STATUS[-1][2])


def install_handlers(app: FastAPI) -> None:
    """Registers the handlers that turn errors into :class:`ErrorBody` responses."""
    app.add_exception_handler(AtomicError, _atomic_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
