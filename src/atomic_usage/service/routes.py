"""The endpoints: predict, task lookups, metrics and health."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

import orjson
from anyio import to_thread
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..config import MAX_HORIZON
from ..engine.payload import shown
from ..errors import PayloadSyntaxError, PayloadTooLarge, RecordError, UnsupportedMediaType
from .errors import error_responses
from .schemas import HealthBody, PredictResponse, TaskBody

__all__ = ["IDEMPOTENCY_KEY_PATTERN", "MAX_HORIZON", "check_content_type", "decode_json", "read_limited", "router"]

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"
"""What an Idempotency-Key may hold: 1 to 200 printable ASCII characters, no space."""

_bearer = HTTPBearer(auto_error=False, description="A token from ATOMIC_API_TOKENS.")
router = APIRouter()


def _state(request: Request) -> Any:
    return request.app.state.atomic


def require_token(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Refuses the request with 401 unless it carries an accepted bearer token."""
    _state(request).verifier.check(creds.credentials if creds is not None else None)


def require_token_unless_open(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """:func:`require_token`, unless ``ATOMIC_OPEN_METRICS`` leaves metrics and health open."""
    if not _state(request).settings.open_metrics:
        require_token(request, creds)


def require_token_unless_health_open(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """:func:`require_token`, unless ``ATOMIC_OPEN_HEALTH`` (or ``ATOMIC_OPEN_METRICS``) leaves
    health open."""
    settings = _state(request).settings
    if not (settings.open_health or settings.open_metrics):
        require_token(request, creds)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes (before it is all read)."""
    return await read_limited(request.headers.get("content-length", ""), request.stream(), limit)


async def read_limited(declared: str, chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """Joins a body's chunks, refused with 413 by its Content-Length or as soon as it passes ``limit``."""
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            [
                RecordError(
                    -1,
                    "body",
                    f"holds {declared} bytes, more than the {limit} allowed (ATOMIC_MAX_BODY_BYTES); split the payload",
                )
            ]
        )
    size, parts = 0, []
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                [
                    RecordError(
                        -1,
                        "body",
                        f"holds more than the {limit} bytes allowed (ATOMIC_MAX_BODY_BYTES); split the payload",
                    )
                ]
            )
        parts.append(chunk)
    return b"".join(parts)


def _media_problem(value: str) -> str | None:
    """Why one Content-Type value is not JSON in UTF-8, or None when it is."""
    media, _, params = value.partition(";")
    kind, slash, sub = media.strip().lower().partition("/")
    if not (kind == "application" and slash and (sub == "json" or (sub.endswith("+json") and len(sub) > 5))):
        problem = f"is {shown(value, 60)}, not JSON; send the body as JSON with Content-Type: application/json"
        if (kind, sub) == ("application", "x-www-form-urlencoded"):  # what curl -d sends unless told otherwise
            problem += " (curl -d sends application/x-www-form-urlencoded: add -H 'Content-Type: application/json')"
        return problem
    for param in params.split(";"):
        name, _, raw = param.partition("=")
        if name.strip().lower() == "charset" and raw.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return (
                f"declares the charset {shown(raw.strip(), 30)}; JSON is read as UTF-8 (RFC 8259): send UTF-8 "
                "with Content-Type: application/json, with charset=utf-8 or none"
            )
    return None


def check_content_type(values: Sequence[str]) -> None:
    """Refuses a request body declared as anything but JSON, before any of it is read.

    Taken: ``application/json`` or any ``application/*+json`` (case aside), with no charset
    parameter or ``charset=utf-8``; and no Content-Type at all: nothing was declared, so the
    body is read as JSON (and refused with 400 if it is not), as raw clients send it.

    Args:
        values: every Content-Type header of the request (none, one, or a repeated header).

    Raises:
        UnsupportedMediaType: another type, another charset, an empty value, or more than one
            Content-Type header (HTTP 415); its one error names the header.
    """
    if not values:
        return
    problem = (
        f"is sent {len(values)} times; send one Content-Type: application/json"
        if len(values) > 1
        else _media_problem(values[0])
    )
    if problem is not None:
        raise UnsupportedMediaType([RecordError(-1, "Content-Type", problem)])


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_json(body: bytes) -> Any:
    """Parses strict JSON (no NaN/Infinity); a 400 names the line and column where it breaks.

    orjson parses valid JSON to the same values as the standard library, several times
    faster; whatever it refuses (bad JSON, integers beyond 64 bits, deep nesting) is parsed
    again by the standard library, which accepts or refuses it with the documented message.
    """
    if not body.strip():
        raise PayloadSyntaxError([RecordError(-1, "body", "is empty; send a JSON object with a usageData list")])
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
        orjson.dumps(value)  # a lone UTF-16 surrogate escape ("\ud800") parses but is no text
        return value
    except TypeError as exc:  # from orjson.dumps: no text, or nested beyond what it encodes
        msg = (
            "holds a lone UTF-16 surrogate escape (such as \\ud800), which is not text; send valid Unicode"
            if "surrogate" in str(exc)
            else "is not valid JSON: nested too deeply"
        )
    except UnicodeDecodeError as exc:
        msg = f"is not UTF-8 (byte {exc.start}); send JSON text in UTF-8"
    except json.JSONDecodeError as exc:
        msg = f"is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
    except (ValueError, RecursionError) as exc:
        msg = f"is not valid JSON: {exc if isinstance(exc, ValueError) else 'nested too deeply'}"
    raise PayloadSyntaxError([RecordError(-1, "body", msg)])


@router.post(
    "/v1/predict",
    summary="Add observations and forecast each record's machine",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    responses=error_responses(400, 401, 409, 413, 415, 422, 503),
    dependencies=[Depends(require_token)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "JSON in UTF-8: Content-Type application/json or application/*+json (charset utf-8 "
            "or none); a request without Content-Type is read as JSON too; any other type is a 415.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
        }
    },
)
async def predict(
    request: Request,
    horizon: Annotated[
        int | None,
        # Checked by process(), not here, so that a bad horizon gets its one message everywhere.
        Query(
            description=f"Steps (5 min) to forecast, 1 to {MAX_HORIZON}; default ATOMIC_HORIZON. "
            "Outside that range: 422 with the horizon's error in `errors`.",
            json_schema_extra={"minimum": 1, "maximum": MAX_HORIZON},
        ),
    ] = None,
    sealed: Annotated[bool, Query(description="Also return each result sealed (AES-256-GCM envelopes).")] = False,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="The request id: a retry with the same key and payload gets the first result, "
            "and no work is done twice; with another payload it is a 409.",
        ),
    ] = None,
) -> Response:
    """Runs ``process()`` on the payload: it is stored durably, then each record's machine is forecast.

    Bad input never applies anything: malformed JSON is a 400, a body over ATOMIC_MAX_BODY_BYTES or
    more than ATOMIC_MAX_RECORDS records a 413, a body declared as another type than JSON a 415,
    and bad records a 422 listing every bad field.
    """
    st = _state(request)
    check_content_type(request.headers.getlist("content-type"))
    payload = decode_json(await _read_body(request, st.settings.max_body_bytes))
    # Awaited on the event loop, no thread per request: the engine's writer, runner and
    # workers do the work, and the response is the JSON the engine encoded (and sealed) once.
    out = await st.predictor.aprocess_json(payload, request_id=idempotency_key, horizon=horizon, sealed=sealed)
    if not out.replayed:  # a replay's results are older than what the gauges may hold
        st.gauges.update_encoded(zip(out.ids, out.plain, strict=True))
    return Response(out.body, media_type="application/json")


@router.get(
    "/v1/tasks/{task_id}",
    summary="A task's state, and its results once done",
    response_model=TaskBody,
    response_model_exclude_none=False,
    responses=error_responses(401, 404, 422),
    dependencies=[Depends(require_token)],
)
def get_task(
    request: Request,
    task_id: Annotated[str, Path(min_length=1, max_length=64, description="The taskId of a predict response.")],
) -> Response:
    """Returns the task; ``results`` is present once it is done. Unknown ids are a 404."""
    return JSONResponse(_state(request).predictor.task(task_id))


@router.get(
    "/v1/tasks",
    summary="The task accepted under an Idempotency-Key",
    response_model=TaskBody,
    responses=error_responses(401, 404, 422),
    dependencies=[Depends(require_token)],
)
def find_task(
    request: Request,
    request_id: Annotated[
        str,
        Query(min_length=1, max_length=200, description="The Idempotency-Key (requestId) of a predict call."),
    ],
) -> Response:
    """Returns the task made for ``request_id``, as ``GET /v1/tasks/{task_id}`` does."""
    return JSONResponse(_state(request).predictor.find_task(request_id))


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
            "description": "Prometheus text format 0.0.4.",
        },
        **error_responses(401),
    },
    dependencies=[Depends(require_token_unless_open)],
)
async def metrics(request: Request) -> Response:
    """The TPS meter, latency, queue depth, workers, restarts, recoveries, tasks and model version.

    With several serving processes, the figures of all of them (see ``service/peers.py``).
    """
    st = _state(request)
    if st.peers is None:
        body = await to_thread.run_sync(generate_latest, st.registry)
    else:
        siblings, retired = await st.peers.scrape()
        body = await to_thread.run_sync(st.render_metrics, siblings, retired)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/healthz",
    summary="Liveness",
    response_model=HealthBody,
    responses=error_responses(401),
    dependencies=[Depends(require_token_unless_health_open)],
)
async def healthz() -> Response:
    """200 while the process serves HTTP at all."""
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    summary="Readiness",
    response_model=HealthBody,
    responses={
        503: {"model": HealthBody, "description": "Starting, stopping, or no worker alive."},
        **error_responses(401),
    },
    dependencies=[Depends(require_token_unless_health_open)],
)
def readyz(request: Request) -> Response:
    """200 when the engine runs with at least one live worker; 503 while starting or stopping."""
    st = _state(request)
    if st.predictor is None or st.stopping:
        return JSONResponse({"status": "stopping" if st.stopping else "starting"}, status_code=503)
    alive = int(st.predictor.pool.stats()["workers"]["alive"])
    return JSONResponse(
        {"status": "ready" if alive else "starting", "workers_alive": alive},
        status_code=200 if alive else 503,
    )
