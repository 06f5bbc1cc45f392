"""Pydantic models of the service's requests and responses, for the OpenAPI document.

The request models only document the payload: ``POST /v1/predict`` reads the raw body so
that the engine's own validation (``engine/payload.py``) produces the per-record error
list, exactly as ``process()`` does. Responses are built by the engine and returned as
they are; these models describe every field of them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Crossing",
    "HealthBody",
    "MetricForecast",
    "ModelInfo",
    "Peak",
    "PredictRequest",
    "PredictResponse",
    "RecordForecasts",
    "RecordResult",
    "StepForecast",
    "TaskBody",
    "Threshold",
    "Trend",
    "UsageRecord",
]


class UsageRecord(BaseModel):
    """One observation of one machine (percent values)."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(min_length=1, pattern=r"\S")] | int = Field(
        description="The machine's id: a non-empty string (an integer is taken as its decimal string)."
    )
    cpuLoad: float | None = Field(
        None, description="CPU use in percent (0-100); null or absent: not measured.", ge=0, le=100
    )
    memoryUsage: float | None = Field(
        None, description="Memory use in percent (0-100); null or absent: not measured.", ge=0, le=100
    )
    storageUsage: float | None = Field(
        None, description="Storage use in percent (0-100); null or absent: not measured.", ge=0, le=100
    )
    timestamp: str | float | None = Field(
        None,
        description="When it was observed: ISO 8601 (no offset = UTC) or epoch seconds (>= 0); absent: receive time.",
        json_schema_extra={
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "number", "minimum": 0},
                {"type": "null"},
            ]
        },
    )


class PredictRequest(BaseModel):
    """The ``process()`` payload. At least one metric per record; one record per machine and time."""

    model_config = ConfigDict(extra="forbid")

    usageData: list[UsageRecord] = Field(
        description="The observations; at most ATOMIC_MAX_RECORDS of them (more: 413).", min_length=1
    )


class StepForecast(BaseModel):
    """One forecast step of one metric."""

    timestamp: str = Field(description="The step's time, ISO 8601 UTC.")
    p10: float = Field(description="10th percentile.")
    p50: float = Field(description="Median.")
    p90: float = Field(description="90th percentile.")


class Trend(BaseModel):
    """The recent trend (least-squares slope over the last hour)."""

    direction: Literal["rising", "falling", "flat"] = Field(description="Significant direction, or flat.")
    slopePerHour: float = Field(description="Slope in units (percent points) per hour.")


class Peak(BaseModel):
    """The peak step: the first step with the highest median, and its forecast."""

    timestamp: str = Field(description="Time of the peak step (the first with the highest median), ISO 8601 UTC.")
    p50: float = Field(description="The median at the peak step: the highest median of the horizon.")
    p90: float | None = Field(
        description="The 90th percentile at the peak step (not the highest p90 of the horizon); "
        "null when the interval is unknown (short history)."
    )


class Crossing(BaseModel):
    """When a forecast quantile first reaches a threshold."""

    timestamp: str = Field(description="The first step at or above the level, ISO 8601 UTC.")
    secondsFromNow: float = Field(description="Seconds from the newest observation to that step.")


class Threshold(BaseModel):
    """One threshold level (ATOMIC_THRESHOLDS) and when it is crossed."""

    level: float = Field(description="The level, in percent.")
    alreadyAbove: bool = Field(description="The newest observed value is at or above it.")
    p50: Crossing | None = Field(description="First crossing of the median; null if none within the horizon.")
    p90: Crossing | None = Field(description="First crossing of the 90th percentile; null if none.")


class MetricForecast(BaseModel):
    """The forecast of one metric of one machine."""

    steps: list[StepForecast] = Field(description="One entry per step ahead (5 minutes each).")
    historyLength: int = Field(description="Observed steps the forecast was made from.")
    model: str = Field(description="What produced it (the model name, or a fallback such as naive(short-history)).")
    trend: Trend
    peak: Peak
    thresholds: list[Threshold]


class RecordForecasts(BaseModel):
    """Per metric, its forecast, or null when the machine has no history of it."""

    cpuLoad: MetricForecast | None
    memoryUsage: MetricForecast | None
    storageUsage: MetricForecast | None


class RecordResult(BaseModel):
    """The result for one record of the payload."""

    index: int = Field(description="Position of the record in usageData.")
    id: str = Field(description="The machine id.")
    timestamp: str = Field(description="The record's time (given or receive time), ISO 8601 UTC.")
    forecasts: RecordForecasts


class ModelInfo(BaseModel):
    """The served model."""

    name: str = Field(description="Model name.")
    version: str = Field(description="Model version (model.json), or the class name of a baseline.")


class PredictResponse(BaseModel):
    """The result of a payload: one entry per record, in order."""

    requestId: str = Field(description="The Idempotency-Key, or the id generated for the request.")
    taskId: str = Field(description="The engine's task id; GET /v1/tasks/{taskId} returns it again.")
    model: ModelInfo
    results: list[RecordResult]
    sealed: list[str] | None = Field(
        None,
        description="With ?sealed=true: each result as an AES-256-GCM envelope (compact JSON text, "
        "see docs/security.md), bound to taskId and the record index; open with `atomic-usage open`.",
    )


class TaskBody(BaseModel):
    """A stored task and, once done, its results."""

    task_id: str = Field(description="The engine's task id.")
    request_id: str = Field(description="The Idempotency-Key (or generated id) it was accepted under.")
    status: Literal["accepted", "running", "done", "failed"] = Field(description="Where it is in its life cycle.")
    attempts: int = Field(description="Times it was claimed to run.")
    error: str | None = Field(description="Why it failed; null unless failed.")
    lease_until: float | None = Field(description="Epoch seconds until which its owner holds it.")
    owner: str | None = Field(description="The engine process running it.")
    created_at: float = Field(description="Epoch seconds of acceptance.")
    updated_at: float = Field(description="Epoch seconds of the last change.")
    results: list[RecordResult] | None = Field(None, description="The results, present once done.")


class HealthBody(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "ready", "starting", "stopping"] = Field(description="The state.")
    workers_alive: int | None = Field(None, description="Engine workers alive (readiness only).")
