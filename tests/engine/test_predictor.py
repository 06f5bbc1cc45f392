"""process(): durable, idempotent, all-or-nothing, recoverable."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from atomic_usage import Settings
from atomic_usage.engine.predictor import UsagePredictor
from atomic_usage.engine.store import CompleteOp
from atomic_usage.errors import IdempotencyError, PayloadError, TaskNotFound
from atomic_usage.models.baselines import Naive, PredictLinear
from atomic_usage.security import open_result

T0 = 1_767_600_000  # 2026-01-05T08:00:00Z


def rec(mid: str, k: int, **values: float) -> dict[str, object]:
    return {"id": mid, "timestamp": T0 + 300 * k, **values}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", workers=2)


@pytest.fixture
def predictor(settings: Settings) -> Iterator[UsagePredictor]:
    with UsagePredictor(settings, model=PredictLinear()) as p:
        yield p


class TestProcess:
    """The first description's process(payload), made durable."""

    def test_result_fields(self, predictor: UsagePredictor) -> None:
        """Each record gets, per metric, steps, history length, model, trend, peak and thresholds."""
        for k in range(20):
            r = predictor.process({"usageData": [rec("disk", k, storageUsage=60 + 2 * k, cpuLoad=20.0)]})
        f = r["results"][0]["forecasts"]
        assert f["memoryUsage"] is None
        sto = f["storageUsage"]
        assert len(sto["steps"]) == 12 and sto["historyLength"] == 20 and sto["model"] == "predict_linear"
        assert sto["trend"]["direction"] == "rising" and sto["trend"]["slopePerHour"] == pytest.approx(24, rel=0.01)
        assert sto["steps"][0]["p50"] == pytest.approx(100.0)
        ninety, hundred = sto["thresholds"]
        assert ninety["alreadyAbove"] and hundred["p50"]["secondsFromNow"] == 300.0
        cpu = f["cpuLoad"]
        assert cpu["trend"]["direction"] == "flat" and all(t["p50"] is None for t in cpu["thresholds"])

    def test_short_history_names_what_served(self, predictor: UsagePredictor) -> None:
        """Two observations: the last value, named ``naive(short-history)`` as in the file forecasts and
        docs/data-rules.md (process() said ``predict_linear``), with p10/p90 null."""
        for k in range(2):
            r = predictor.process({"usageData": [rec("new", k, cpuLoad=10.0 + 5 * k)]})
        cpu = r["results"][0]["forecasts"]["cpuLoad"]
        assert cpu["model"] == "naive(short-history)" and cpu["historyLength"] == 2
        assert {s["p50"] for s in cpu["steps"]} == {15.0} and cpu["steps"][0]["p90"] is None
        r = predictor.process({"usageData": [rec("new", 2, cpuLoad=20.0)]})
        assert r["results"][0]["forecasts"]["cpuLoad"]["model"] == "naive(short-window)"  # 3 values < 12

    def test_values_apart_after_an_outage_get_no_band(self, settings: Settings) -> None:
        """One value, four hours of nothing, then two: one change between consecutive steps, so
        the interval is unknown (null) as with fewer than three values, not the zero-width band a
        single change of 0 gave (p10 = p50 = p90: certainty); a dense machine beside it keeps its band."""
        with UsagePredictor(settings, model=Naive()) as p:
            p.process(
                {
                    "usageData": [rec("back", 0, cpuLoad=5.0)]
                    + [rec("dense", k, cpuLoad=10.0 + k % 3) for k in range(50)]
                }
            )
            r = p.process({"usageData": [rec("back", 48, cpuLoad=6.0), rec("back", 49, cpuLoad=6.0)]})
            cpu = r["results"][1]["forecasts"]["cpuLoad"]
            assert cpu["model"] == "naive(short-history)" and cpu["historyLength"] == 3
            assert all(s["p10"] is None and s["p90"] is None and s["p50"] == 6.0 for s in cpu["steps"])
            dense = p.process({"usageData": [rec("dense", 50, cpuLoad=11.0)]})["results"][0]["forecasts"]["cpuLoad"]
            assert dense["steps"][0]["p90"] is not None and dense["steps"][0]["p90"] > dense["steps"][0]["p10"]

    def test_bad_payload_applies_nothing(self, predictor: UsagePredictor) -> None:
        """A payload with one bad record stores nothing: no task, no history."""
        with pytest.raises(PayloadError) as info:
            predictor.process({"usageData": [rec("ok", 0, cpuLoad=5.0), rec("bad", 0, cpuLoad=500.0)]})
        assert [(e.index, e.field) for e in info.value.errors] == [(1, "cpuLoad")]
        assert "ok" not in predictor.history and sum(predictor.store.counts().values()) == 0

    def test_control_character_in_id_applies_nothing(self, predictor: UsagePredictor) -> None:
        """A record whose id holds a NUL is refused with the payload: no task, no history, no observation."""
        with pytest.raises(PayloadError) as info:
            predictor.process({"usageData": [rec("ok", 0, cpuLoad=5.0), rec("b\x00d", 0, cpuLoad=5.0)]})
        assert [(e.index, e.field) for e in info.value.errors] == [(1, "id")]
        assert "ok" not in predictor.history and "b\x00d" not in predictor.history
        assert sum(predictor.store.counts().values()) == 0
        assert predictor.store.history_snapshot(12)[0] == {}

    def test_idempotent_retry(self, predictor: UsagePredictor) -> None:
        """The same request id returns the first result; with another payload it is refused."""
        p = {"usageData": [rec("a", 0, cpuLoad=10.0)]}
        first = predictor.process(p, request_id="req-1")
        again = predictor.process(p, request_id="req-1")
        assert again == first and predictor.store.counts()["done"] == 1
        with pytest.raises(IdempotencyError, match="req-1"):
            predictor.process({"usageData": [rec("a", 1, cpuLoad=11.0)]}, request_id="req-1")
        generated = predictor.process({"usageData": [rec("a", 2, cpuLoad=12.0)]})
        assert generated["requestId"] and generated["requestId"] != "req-1"

    def test_replay_is_not_counted_as_new_records(self, predictor: UsagePredictor) -> None:
        """A retry answered with the stored result counts as a replay, not as new records."""
        p = {"usageData": [rec("a", 0, cpuLoad=10.0), rec("b", 0, cpuLoad=20.0)]}
        predictor.process(p, request_id="req-r")
        predictor.process(p, request_id="req-r")
        asyncio.run(predictor.aprocess(p, request_id="req-r"))
        asyncio.run(predictor.aprocess_json(p, request_id="req-r"))
        s = predictor.stats()
        assert (s["records_total"], s["replays_total"]) == (2, 3)
        assert s["latency_s"]["samples"] == 4  # a replay is still a call the caller waited for

    def test_lookups_name_what_was_not_found(self, predictor: UsagePredictor) -> None:
        """An unknown request id is reported as a request id, an unknown task id as a task id."""
        first = predictor.process({"usageData": [rec("a", 0, cpuLoad=10.0)]}, request_id="req-9")
        assert predictor.find_task("req-9")["task_id"] == first["taskId"]
        with pytest.raises(TaskNotFound, match="No task was accepted under the request id 'req-8'") as info:
            predictor.find_task("req-8")
        assert (info.value.request_id, info.value.task_id) == ("req-8", None) and "has the id" not in str(info.value)
        with pytest.raises(TaskNotFound, match="No task has the id 'req-9'") as info:
            predictor.task("req-9")  # a request id is not a task id
        assert (info.value.task_id, info.value.request_id) == ("req-9", None)

    def test_results_sealed_at_rest(self, predictor: UsagePredictor) -> None:
        """Stored bodies are envelopes that open to the returned result, bound to task and record."""
        r = predictor.process({"usageData": [rec("a", 0, cpuLoad=10.0), rec("b", 0, cpuLoad=20.0)]}, sealed=True)
        stored = predictor.store.results(r["taskId"])
        assert b"cpuLoad" not in stored[0] and len(r["sealed"]) == 2
        opened = open_result(r["sealed"][1], keyring=predictor.keyring, task_id=r["taskId"], record_id="1")
        assert opened == r["results"][1]
        assert predictor.task(r["taskId"])["results"] == r["results"]

    def test_history_survives_restart(self, settings: Settings) -> None:
        """A new predictor on the same data folder rebuilds the history from the store."""
        with UsagePredictor(settings, model=Naive()) as p:
            for k in range(5):
                p.process({"usageData": [rec("m", k, cpuLoad=float(k))]})
        with UsagePredictor(settings, model=Naive()) as p:
            r = p.process({"usageData": [rec("m", 5, cpuLoad=5.0)]})
        assert r["results"][0]["forecasts"]["cpuLoad"]["historyLength"] == 6

    def test_old_finished_tasks_are_deleted_at_start(self, tmp_path: Path) -> None:
        """The start-up maintenance pass deletes finished tasks older than ``task_keep_s`` with
        their results, so a long-running service's store stops growing; newer ones stay."""
        from atomic_usage.engine.store import STORE_FILENAME, TaskStore

        settings = Settings(data_dir=tmp_path / "data", workers=1, task_keep_s=3600)
        with UsagePredictor(settings, model=Naive()) as p:
            recent = p.process({"usageData": [rec("m", 0, cpuLoad=1.0)]}, request_id="recent")
        with TaskStore(tmp_path / "data" / STORE_FILENAME, clock=lambda: time.time() - 7200) as store:
            store.complete(store.accept({"old": 1}, request_id="old").task.task_id, [b"x"])
        with UsagePredictor(settings, model=Naive()) as p:
            pause = threading.Event()
            for _ in range(200):  # the start-up pass runs on the maintenance thread
                if p.store.find("old") is None:
                    break
                pause.wait(0.05)
            assert p.store.find("old") is None
            assert p.store.find("recent") is not None
            assert p.process({"usageData": [rec("m", 0, cpuLoad=1.0)]}, request_id="recent") == recent

    def test_stored_history_is_trimmed_to_the_limit(self, tmp_path: Path) -> None:
        """The store keeps at most ``history_limit`` observations per machine and metric: the
        start-up maintenance pass trims what an earlier run left, and ``trim_history`` what
        this one added; the newest are kept, so a restart still reads a full history."""
        import sqlite3

        from atomic_usage.engine.store import STORE_FILENAME

        big = Settings(data_dir=tmp_path / "data", workers=1, history_limit=100)
        with UsagePredictor(big, model=Naive()) as p:
            for k in range(12):
                p.process({"usageData": [rec("m", k, cpuLoad=float(k), memoryUsage=50.0)]})

        def stored() -> list[tuple[str, int, float]]:
            with sqlite3.connect(tmp_path / "data" / STORE_FILENAME) as conn:
                return conn.execute(
                    "SELECT metric, COUNT(*), MIN(ts) FROM observations GROUP BY metric ORDER BY metric"
                ).fetchall()

        assert [n for _, n, _ in stored()] == [12, 12]
        small = Settings(data_dir=tmp_path / "data", workers=1, history_limit=5)
        with UsagePredictor(small, model=Naive()) as p:
            pause = threading.Event()
            for _ in range(200):  # the start-up pass runs on the maintenance thread
                if [n for _, n, _ in stored()] == [5, 5]:
                    break
                pause.wait(0.05)
            assert [n for _, n, _ in stored()] == [5, 5]
            assert {ts for _, _, ts in stored()} == {T0 + 300 * 7}  # the newest five: steps 7-11
            for k in range(12, 15):
                p.process({"usageData": [rec("m", k, cpuLoad=float(k), memoryUsage=50.0)]})
            assert p.trim_history() == 6
            assert [n for _, n, _ in stored()] == [5, 5]
        with UsagePredictor(small, model=Naive()) as p:
            r = p.process({"usageData": [rec("m", 15, cpuLoad=15.0)]})
        # the five kept observations read back, and the new one
        assert r["results"][0]["forecasts"]["cpuLoad"]["historyLength"] == 6

    def test_recovery_runs_abandoned_task_once(self, settings: Settings) -> None:
        """A task accepted by a process that died is completed by the next start, exactly once."""
        with UsagePredictor(settings, model=Naive(), recover=False) as p:
            acc = p.store.accept(
                {"usageData": [rec("z", 0, cpuLoad=3.0)], "horizon": 4},
                request_id="lost",
                observations=[("z", "cpuLoad", float(T0), 3.0)],
                owner="dead",
                lease_s=0.0,
            )
        with UsagePredictor(settings, model=Naive(), recover=False) as p:
            assert p.recover() == {"resumed": 1, "failed": 0}
            done = p.task(acc.task.task_id)
            assert done["status"] == "done" and len(done["results"][0]["forecasts"]["cpuLoad"]["steps"]) == 4
            assert p.recover() == {"resumed": 0, "failed": 0}
            assert (
                p.process({"usageData": [rec("z", 0, cpuLoad=3.0)]}, request_id="lost", horizon=4)["results"]
                == done["results"]
            )
            assert p.stats()["recovered_tasks"] == 1

    def test_recovery_fails_a_task_its_rules_now_refuse(self, settings: Settings) -> None:
        """An abandoned task stored before control characters in ids were refused ends failed, with
        the reason, instead of being handed back by every recovery pass."""
        with UsagePredictor(settings, model=Naive(), recover=False) as p:
            acc = p.store.accept(
                {"usageData": [rec("z\x00", 0, cpuLoad=3.0)], "horizon": 4},
                observations=[("z\x00", "cpuLoad", float(T0), 3.0)],
                owner="dead",
                lease_s=0.0,
            )
        with UsagePredictor(settings, model=Naive(), recover=False) as p:
            p.recover()
            task = p.task(acc.task.task_id)
            assert task["status"] == "failed" and "control character U+0000" in task["error"]
            assert p.recover() == {"resumed": 0, "failed": 0}

    def test_unknown_task(self, predictor: UsagePredictor) -> None:
        """Asking for a task that does not exist is TaskNotFound."""
        with pytest.raises(TaskNotFound):
            predictor.task("nope")

    def test_async_twin(self, predictor: UsagePredictor) -> None:
        """aprocess gives the same kind of result for asyncio callers."""
        r = asyncio.run(predictor.aprocess({"usageData": [rec("a", 0, cpuLoad=1.0)]}))
        assert r["results"][0]["id"] == "a"

    def test_stats(self, predictor: UsagePredictor) -> None:
        """stats() reports records, rates, latency, batches, workers and tasks."""
        predictor.process({"usageData": [rec(f"m{i}", 0, cpuLoad=1.0) for i in range(10)]})
        s = predictor.stats()
        assert s["records_total"] == 10 and s["tasks"]["done"] == 1 and s["workers"]["alive"] == 2
        assert {"1s", "60s", "300s"} <= set(s["tps"]) and s["latency_s"]["p50"] is not None
        json.dumps(s)

    def test_skip_persistence(self, tmp_path: Path) -> None:
        """With SKIP_PERSISTENCE nothing is written to the data folder."""
        s = Settings(data_dir=tmp_path / "none", skip_persistence=True)
        with UsagePredictor(s, model=Naive()) as p:
            r = p.process({"usageData": [rec("a", 0, cpuLoad=1.0)]}, sealed=True)
        assert r["sealed"] and not (tmp_path / "none").exists()

    def test_bundled_model_by_default(self, tmp_path: Path) -> None:
        """Without a model argument the bundled model serves."""
        from atomic_usage.models.artifact import default_model_dir

        if not (default_model_dir() / "model.onnx").exists():
            pytest.skip("no bundled model in this checkout")
        with UsagePredictor(Settings(data_dir=tmp_path, skip_persistence=True)) as p:
            r = p.process({"usageData": [{"id": "1", "cpuLoad": 30, "memoryUsage": 70, "storageUsage": 20}]})
        assert r["model"]["name"] == p.model.name and r["results"][0]["forecasts"]["cpuLoad"]["steps"]


class Picky(Naive):
    """Naive, except that a history holding 66 breaks it."""

    def forecast_arrays(self, histories: Any, horizon: int, bounded: Any) -> np.ndarray:
        if any(np.nanmax(h) == 66.0 for h in histories):
            raise ValueError("no 66 here")
        return super().forecast_arrays(histories, horizon, bounded)


class TestConcurrentCalls:
    """Concurrent calls share transactions and model batches, and each still gets only its own, durable result."""

    def test_many_threads_all_durable_and_run_once(self, settings: Settings) -> None:
        """Every one of 24 concurrent calls is done in the store, claimed once, with its own records."""
        out: dict[int, dict[str, Any]] = {}

        with UsagePredictor(settings, model=Naive()) as p:

            def go(i: int) -> None:
                payload = {"usageData": [rec(f"m{(i + j) % 7}", i, cpuLoad=float(i + j)) for j in range(3)]}
                out[i] = p.process(payload, request_id=f"c-{i}")

            threads = [threading.Thread(target=go, args=(i,)) for i in range(24)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for i, r in out.items():
                assert [x["id"] for x in r["results"]] == [f"m{(i + j) % 7}" for j in range(3)]
                task = p.task(r["taskId"])
                assert task["status"] == "done" and task["attempts"] == 1 and task["results"] == r["results"]
            assert p.store.counts()["done"] == 24
            assert p.stats()["commit"]["writes"] >= 48  # an accept and a completion each

    def test_same_request_id_concurrently_does_the_work_once(self, predictor: UsagePredictor) -> None:
        """Concurrent retries of one request id make one task and all get its results."""
        payload = {"usageData": [rec("a", 0, cpuLoad=10.0), rec("b", 0, memoryUsage=50.0)]}
        barrier = threading.Barrier(8)
        got: list[dict[str, Any]] = []

        def go() -> None:
            barrier.wait()
            got.append(predictor.process(payload, request_id="dup"))

        threads = [threading.Thread(target=go) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 8 and all(r == got[0] for r in got)
        assert predictor.store.counts()["done"] == 1 and len(predictor.store.list_tasks()) == 1
        assert predictor.task(got[0]["taskId"])["attempts"] == 1
        s = predictor.stats()  # the 7 that found the task, running or done, are replays
        assert (s["records_total"], s["replays_total"]) == (2, 7)

    def test_async_calls_together(self, predictor: UsagePredictor) -> None:
        """aprocess calls gathered on one loop all complete, each with its own task."""

        async def main() -> list[dict[str, Any]]:
            return await asyncio.gather(
                *(predictor.aprocess({"usageData": [rec(f"m{i}", 0, cpuLoad=float(i))]}) for i in range(20))
            )

        results = asyncio.run(main())
        assert len({r["taskId"] for r in results}) == 20
        assert [r["results"][0]["id"] for r in results] == [f"m{i}" for i in range(20)]

    def test_json_response_is_the_dict_response(self, predictor: UsagePredictor) -> None:
        """aprocess_json's body decodes to what process() returns for the same request, sealed or not."""
        payload = {"usageData": [rec("a", 0, cpuLoad=10.0), rec("a", 1, cpuLoad=12.0)]}
        enc = asyncio.run(predictor.aprocess_json(payload, request_id="j-1", sealed=True))
        body = json.loads(enc.body)
        assert body["results"] == enc.results
        again = predictor.process(payload, request_id="j-1", sealed=True)
        assert body == again
        retry = asyncio.run(predictor.aprocess_json(payload, request_id="j-1"))
        assert retry.body == enc.body.split(b',"sealed":')[0] + b"}"  # the same bytes, re-encoded from the store

    def test_failing_model_fails_only_its_task(self, settings: Settings) -> None:
        """A record whose forecast raises fails its task (stored with the reason); other tasks complete."""

        with UsagePredictor(settings.replace(workers=1, batch_max_size=1), model=Picky()) as p:
            ok = p.process({"usageData": [rec("fine", 0, cpuLoad=1.0)]})
            with pytest.raises(Exception, match="no 66 here") as info:
                p.process({"usageData": [rec("bad", 0, cpuLoad=66.0)]}, request_id="bad-1")
            task = p.find_task("bad-1")
            assert task["status"] == "failed" and "no 66 here" in task["error"]
            assert "failed" in str(info.value)
            assert p.task(ok["taskId"])["status"] == "done"

    def test_a_failure_finishing_a_group_fails_its_tasks(self, settings: Settings) -> None:
        """A bug while a group's results are handed to the store fails that group's tasks, with
        the reason, and the engine goes on; it used to fail only the round's new tasks, so the
        group's callers waited out ATOMIC_WAIT_S and their tasks stayed open."""
        with UsagePredictor(settings.replace(workers=1, wait_s=20), model=Naive()) as p:
            real = p.runner.committer.submit_many
            calls = []

            def broken_once(ops: Any) -> Any:
                if all(isinstance(op, CompleteOp) for op in ops):
                    calls.append(len(ops))
                    if len(calls) == 1:
                        raise RuntimeError("committer bug")
                return real(ops)

            p.runner.committer.submit_many = broken_once  # type: ignore[method-assign]
            with pytest.raises(Exception, match="committer bug"):  # not the wait's timeout
                p.process({"usageData": [rec("a", 0, cpuLoad=1.0)]}, request_id="r-1")
            assert p.find_task("r-1")["status"] == "failed"
            after = p.process({"usageData": [rec("b", 0, cpuLoad=2.0)]})
            assert p.task(after["taskId"])["status"] == "done" and calls == [1, 1]

    def test_a_task_failed_elsewhere_is_not_reported_done(self, settings: Settings) -> None:
        """When the store has the task failed already as its results arrive (recovered work that
        failed first), the task stays failed and the caller gets an error, not "done" with an
        empty list of results."""
        with UsagePredictor(settings.replace(workers=1), model=Naive()) as p:
            real = p.runner.committer.submit_many

            def failed_first(ops: Any) -> Any:
                for op in ops:
                    if isinstance(op, CompleteOp):
                        p.store.fail(op.task_id, "RuntimeError: failed in another process")
                return real(ops)

            p.runner.committer.submit_many = failed_first  # type: ignore[method-assign]
            with pytest.raises(Exception, match="failed where it was run after a restart"):
                p.process({"usageData": [rec("a", 0, cpuLoad=1.0)]}, request_id="r-2")
            task = p.find_task("r-2")
            assert task["status"] == "failed" and "another process" in task["error"]


class TestModelArgument:
    """``model=`` takes a forecaster or what ``--model`` takes."""

    def test_a_baseline_name_or_a_folder(self, settings: Settings, tiny_model_dir: Path) -> None:
        for model, name in (("naive", "naive"), (str(tiny_model_dir), None), (tiny_model_dir, None)):
            with UsagePredictor(settings, model=model) as p:  # type: ignore[arg-type]
                out = p.process({"usageData": [rec("a", k, cpuLoad=10.0 + k) for k in range(3)]})
            served = out["results"][-1]["forecasts"]["cpuLoad"]["model"]
            assert served == name if name else served not in ("", None)

    def test_anything_else_is_refused_before_anything_is_stored(self, settings: Settings) -> None:
        """A wrong model used to be taken without a word; every worker then crashed on it."""
        from atomic_usage.errors import ArtifactError

        with pytest.raises(TypeError, match="is not a Forecaster, a baseline's name or a model folder"):
            UsagePredictor(settings, model=42)  # type: ignore[arg-type]
        with pytest.raises(ArtifactError, match="did you mean 'naive'"):
            UsagePredictor(settings, model="NAIVE")
        assert not (settings.data_dir / "engine.sqlite3").exists()  # type: ignore[operator]


class TestCallArguments:
    """process()'s own arguments are checked before anything is stored."""

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"horizon": 0},
            {"horizon": -1},
            {"horizon": 10**6},
            {"horizon": True},
            {"request_id": ""},
            {"request_id": {"a": 1}},
            {"request_id": "req\x00-1"},
            {"request_id": "req\n1"},
        ],
    )
    def test_bad_arguments(self, predictor: UsagePredictor, kwargs: dict[str, object]) -> None:
        """A bad horizon or request id is a PayloadError naming it; no task is stored."""
        with pytest.raises(PayloadError, match="the request, field"):
            predictor.process({"usageData": [rec("a", 0, cpuLoad=1.0)]}, **kwargs)  # type: ignore[arg-type]
        assert sum(predictor.store.counts().values()) == 0


def backlog(machines: int, records: int) -> dict[str, Any]:
    """``records`` steps of each of ``machines`` machines, oldest first, in one payload."""
    return {
        "usageData": [
            rec(f"m{m}", k, cpuLoad=30.0 + (7 * k + m) % 40, memoryUsage=50.0 + (k + m) % 20, storageUsage=20 + 0.1 * k)
            for k in range(records)
            for m in range(machines)
        ]
    }


class TestBacklog:
    """A payload of many records per machine: one result per record, each its machine's forecast after them all."""

    def test_each_record_gets_its_machines_latest_forecast(self, settings: Settings) -> None:
        """Every record's forecasts equal those of a call with the machine's last record once the
        earlier ones joined its history, and its result equals its stored text."""
        payload = backlog(machines=4, records=30)
        with UsagePredictor(settings, model=PredictLinear()) as p:
            got = p.process(payload, horizon=48)
            stored = p.task(got["taskId"])["results"]
        with UsagePredictor(Settings(skip_persistence=True), model=PredictLinear()) as q:
            q.process({"usageData": payload["usageData"][:-4]})
            latest = {r["id"]: r for r in q.process({"usageData": payload["usageData"][-4:]}, horizon=48)["results"]}
        assert got["results"] == stored
        assert [r["index"] for r in got["results"]] == list(range(120))
        for r, sent in zip(got["results"], payload["usageData"], strict=True):
            assert r["id"] == sent["id"]
            assert (r["forecasts"], r["reasons"]) == (latest[r["id"]]["forecasts"], latest[r["id"]]["reasons"])

    def test_records_own_their_results(self, settings: Settings) -> None:
        """Two records of one machine have equal results that a caller can change apart."""
        with UsagePredictor(settings, model=PredictLinear()) as p:
            first, second = p.process(backlog(machines=1, records=2))["results"]
        assert first["forecasts"] == second["forecasts"]
        first["forecasts"]["cpuLoad"]["steps"][0]["p50"] = -1.0
        first["forecasts"]["cpuLoad"]["thresholds"].clear()
        assert second["forecasts"]["cpuLoad"]["steps"][0]["p50"] != -1.0
        assert second["forecasts"]["cpuLoad"]["thresholds"]

    def test_peak_memory_follows_the_response(self, settings: Settings) -> None:
        """A backlog's call peaks below 4x its response's JSON size, and nothing of it stays in the
        engine after the response is dropped (before: 6.8x, with every result's text and sealed
        body held until the next call)."""
        with UsagePredictor(settings, model=PredictLinear()) as p:
            p.process(backlog(machines=2, records=2), horizon=288)  # sessions, caches and threads warm
            payload = backlog(machines=10, records=50)
            gc.collect()
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                out = p.process(payload, horizon=288)
                peak = tracemalloc.get_traced_memory()[1] - base
                size = len(orjson.dumps(out["results"]))
                del out
                gc.collect()
                kept = tracemalloc.get_traced_memory()[0] - base
            finally:
                tracemalloc.stop()
        assert peak < 4 * size, (peak, size)
        assert kept < 0.2 * size, (kept, size)
