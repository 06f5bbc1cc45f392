"""The contract every task store honours, run on TaskStore and MemoryStore alike.

``check_task_store(factory)`` runs every check; ``STORE_CHECKS`` lists them so a
test can parametrize over them and report each one by name (sklearn's
``check_estimator`` does the same with its generator of checks).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from atomic_usage.engine.status import TaskStatus
from atomic_usage.engine.store import AcceptOp, CompleteOp, FailOp, Store
from atomic_usage.errors import IdempotencyError, TaskNotFound

__all__ = ["STORE_CHECKS", "FakeClock", "StoreFactory", "check_task_store"]


class FakeClock:
    """A settable epoch clock, so lease expiry needs no sleeping."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


StoreFactory = Callable[[FakeClock], Store]

PAYLOAD = {"usageData": [{"id": "web-1", "cpuLoad": 30.0, "memoryUsage": 70.0, "storageUsage": 20.0}]}
OTHER = {"usageData": [{"id": "web-1", "cpuLoad": 31.0, "memoryUsage": 70.0, "storageUsage": 20.0}]}


def check_accept_creates_accepted_task(store: Store, clock: FakeClock) -> None:
    acc = store.accept(PAYLOAD)
    assert acc.created and acc.results is None
    t = acc.task
    assert t.status is TaskStatus.ACCEPTED and t.attempts == 0 and t.error is None
    assert t.payload == PAYLOAD and len(t.request_id) == 32 and t.created_at == clock.now
    assert store.get(t.task_id) == t
    assert store.find(t.request_id) == t and store.find("nope") is None


def check_accept_copies_payload(store: Store, clock: FakeClock) -> None:
    payload = {"usageData": [{"id": "a", "cpuLoad": 1.0}]}
    t = store.accept(payload).task
    payload["usageData"][0]["cpuLoad"] = 99.0
    assert store.get(t.task_id).payload["usageData"][0]["cpuLoad"] == 1.0


def check_same_request_id_returns_first_task(store: Store, clock: FakeClock) -> None:
    first = store.accept(PAYLOAD, request_id="r-1")
    again = store.accept(dict(PAYLOAD), request_id="r-1")
    assert not again.created and again.task.task_id == first.task.task_id and again.results is None
    store.claim(first.task.task_id, owner="o")
    store.complete(first.task.task_id, [b"result-0"])
    done = store.accept(PAYLOAD, request_id="r-1")
    assert not done.created and done.task.status is TaskStatus.DONE and done.results == [b"result-0"]


def check_request_id_with_other_payload_is_refused(store: Store, clock: FakeClock) -> None:
    store.accept(PAYLOAD, request_id="r-1")
    with pytest.raises(IdempotencyError, match="'r-1' was already used with a different payload"):
        store.accept(OTHER, request_id="r-1")
    assert len(store.list_tasks()) == 1


def check_concurrent_retries_create_one_task(store: Store, clock: FakeClock) -> None:
    created: list[bool] = []
    barrier = threading.Barrier(4)

    def go() -> None:
        barrier.wait()
        created.append(store.accept(PAYLOAD, request_id="same").created)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert sorted(created) == [False, False, False, True]


def check_claim_takes_a_lease_and_counts_attempts(store: Store, clock: FakeClock) -> None:
    tid = store.accept(PAYLOAD).task.task_id
    t = store.claim(tid, owner="a", lease_s=10)
    assert t is not None and t.status is TaskStatus.RUNNING and t.attempts == 1
    assert t.owner == "a" and t.lease_until == clock.now + 10
    assert store.claim(tid, owner="b", lease_s=10) is None
    clock.advance(11)
    stolen = store.claim(tid, owner="b", lease_s=10)
    assert stolen is not None and stolen.owner == "b" and stolen.attempts == 2


def check_accept_with_owner_leases_the_task(store: Store, clock: FakeClock) -> None:
    tid = store.accept(PAYLOAD, owner="a", lease_s=5).task.task_id
    assert store.claim(tid, owner="b") is None
    assert store.recover().resumed == []
    mine = store.claim(tid, owner="a")
    assert mine is not None and mine.owner == "a"


def check_accepted_task_with_expired_lease_can_be_claimed(store: Store, clock: FakeClock) -> None:
    tid = store.accept(PAYLOAD, owner="a", lease_s=5).task.task_id
    clock.advance(6)
    t = store.claim(tid, owner="b")
    assert t is not None and t.owner == "b"


def check_renew_extends_only_the_owners_leases(store: Store, clock: FakeClock) -> None:
    a = store.accept(PAYLOAD).task.task_id
    b = store.accept(OTHER).task.task_id
    store.claim(a, owner="x", lease_s=5)
    store.claim(b, owner="y", lease_s=5)
    clock.advance(4)
    assert store.renew([a, b, "missing"], owner="x", lease_s=5) == 1
    clock.advance(2)
    assert store.get(a).lease_until == clock.now + 3
    assert [t.task_id for t in store.recover().resumed] == [b]


def check_results_are_written_once(store: Store, clock: FakeClock) -> None:
    tid = store.accept(PAYLOAD).task.task_id
    store.claim(tid, owner="a")
    assert store.complete(tid, [b"first-0", b"first-1"]) == [b"first-0", b"first-1"]
    assert store.complete(tid, [b"second-0"]) == [b"first-0", b"first-1"]
    t = store.get(tid)
    assert t.status is TaskStatus.DONE and t.owner is None and t.lease_until is None
    assert store.results(tid) == [b"first-0", b"first-1"]
    assert store.fail(tid, "late failure") is False
    assert store.get(tid).status is TaskStatus.DONE


def check_failed_task_stays_failed(store: Store, clock: FakeClock) -> None:
    tid = store.accept(PAYLOAD).task.task_id
    assert store.fail(tid, "bad record") is True
    t = store.get(tid)
    assert t.status is TaskStatus.FAILED and t.error == "bad record"
    assert store.complete(tid, [b"late"]) == []
    assert store.results(tid) == [] and store.get(tid).status is TaskStatus.FAILED
    assert store.fail(tid, "again") is False and store.get(tid).error == "bad record"
    assert store.claim(tid, owner="a") is None


def check_recover_resumes_expired_and_fails_exhausted(store: Store, clock: FakeClock) -> None:
    free = store.accept({"n": 1}).task.task_id
    expired = store.accept({"n": 2}).task.task_id
    live = store.accept({"n": 3}).task.task_id
    exhausted = store.accept({"n": 4}).task.task_id
    store.claim(expired, owner="dead", lease_s=1)
    for _ in range(3):
        clock.advance(2)
        store.claim(exhausted, owner="dead", lease_s=1)
    store.claim(live, owner="alive", lease_s=60)
    clock.advance(2)
    report = store.recover(max_attempts=3)
    assert [t.task_id for t in report.resumed] == [free, expired]
    assert all(t.status is TaskStatus.ACCEPTED and t.owner is None for t in report.resumed)
    assert [t.task_id for t in report.failed] == [exhausted]
    assert store.get(exhausted).status is TaskStatus.FAILED
    assert "Gave up after 3 attempts" in (store.get(exhausted).error or "")
    assert store.get(live).status is TaskStatus.RUNNING
    forced = store.recover(force=True)
    assert {t.task_id for t in forced.resumed} == {free, expired, live} and forced.failed == []


def check_unfinished_lists_open_tasks_oldest_first(store: Store, clock: FakeClock) -> None:
    ids = []
    for i in range(4):
        ids.append(store.accept({"n": i}).task.task_id)
        clock.advance(1)
    store.claim(ids[1], owner="a")
    store.fail(ids[2], "x")
    store.claim(ids[3], owner="a")
    store.complete(ids[3], [b""])
    assert [t.task_id for t in store.unfinished()] == ids[:2]


def check_list_and_count_tasks(store: Store, clock: FakeClock) -> None:
    ids = []
    for i in range(3):
        ids.append(store.accept({"n": i}).task.task_id)
        clock.advance(1)
    store.fail(ids[0], "x")
    assert [t.task_id for t in store.list_tasks()] == ids[::-1]
    assert [t.task_id for t in store.list_tasks(limit=2)] == ids[:0:-1]
    assert [t.task_id for t in store.list_tasks(status=TaskStatus.FAILED)] == [ids[0]]
    assert store.counts() == {
        TaskStatus.ACCEPTED: 2,
        TaskStatus.RUNNING: 0,
        TaskStatus.DONE: 0,
        TaskStatus.FAILED: 1,
    }


def check_unknown_task_raises(store: Store, clock: FakeClock) -> None:
    for call in (
        lambda: store.get("nope"),
        lambda: store.claim("nope", owner="a"),
        lambda: store.complete("nope", []),
        lambda: store.fail("nope", "x"),
        lambda: store.results("nope"),
    ):
        with pytest.raises(TaskNotFound, match="No task has the id 'nope'"):
            call()


def check_observations_feed_histories(store: Store, clock: FakeClock) -> None:
    store.accept({"n": 1}, observations=[("m1", "cpuLoad", float(t), float(t)) for t in range(5)])
    store.accept({"n": 2}, observations=[("m1", "cpuLoad", 4.0, 40.0), ("m2", "memoryUsage", 1.0, 7.0)])
    assert store.load_histories(3) == {
        ("m1", "cpuLoad"): [(2.0, 2.0), (3.0, 3.0), (4.0, 40.0)],
        ("m2", "memoryUsage"): [(1.0, 7.0)],
    }
    assert store.load_histories(0) == {}
    assert store.trim_observations(2) == 3
    assert store.load_histories(10) == {
        ("m1", "cpuLoad"): [(3.0, 3.0), (4.0, 40.0)],
        ("m2", "memoryUsage"): [(1.0, 7.0)],
    }
    assert store.trim_observations(0) == 3 and store.load_histories(10) == {}


def check_retry_does_not_append_observations_again(store: Store, clock: FakeClock) -> None:
    store.accept({"n": 1}, request_id="r", observations=[("m", "cpuLoad", 1.0, 1.0)])
    store.accept({"n": 1}, request_id="r", observations=[("m", "cpuLoad", 2.0, 2.0)])
    assert store.load_histories(10) == {("m", "cpuLoad"): [(1.0, 1.0)]}


def check_accept_with_claim_stores_a_running_task(store: Store, clock: FakeClock) -> None:
    acc = store.accept(PAYLOAD, request_id="r-1", owner="o", claim=True)
    t = acc.task
    assert acc.created and t.status is TaskStatus.RUNNING and t.attempts == 1 and t.owner == "o"
    assert t.lease_until is not None and t.lease_until > clock.now
    assert store.get(t.task_id) == t
    assert store.claim(t.task_id, owner="other") is None  # leased: nobody else takes it
    with pytest.raises(ValueError, match="needs the owner"):
        store.accept(OTHER, request_id="r-2", claim=True)
    assert store.find("r-2") is None


def check_apply_runs_each_write_alone(store: Store, clock: FakeClock) -> None:
    first = store.accept(PAYLOAD, request_id="r-0").task
    out = store.apply(
        [
            AcceptOp(PAYLOAD, "r-1", [("web-1", "cpuLoad", 100.0, 30.0)], "o", claim=True),
            AcceptOp(OTHER, "r-0"),  # reused with another payload: refused, alone
            CompleteOp("no-such-task", [b"x"]),  # refused, alone
            AcceptOp(PAYLOAD, "r-1"),  # sees the accept earlier in the same group
            FailOp(first.task_id, "boom"),
        ]
    )
    assert isinstance(out[1], IdempotencyError) and isinstance(out[2], TaskNotFound)
    created, again = out[0], out[3]
    assert created.created and created.task.status is TaskStatus.RUNNING
    assert not again.created and again.task.task_id == created.task.task_id
    assert out[4] is True and store.get(first.task_id).status is TaskStatus.FAILED
    assert store.load_histories(10)[("web-1", "cpuLoad")] == [(100.0, 30.0)]
    done = store.apply([CompleteOp(created.task.task_id, [b"a", b"b"]), CompleteOp(created.task.task_id, [b"c"])])
    assert done == [[b"a", b"b"], [b"a", b"b"]]  # written once: the second completion gets the first
    assert store.results(created.task.task_id) == [b"a", b"b"]
    assert store.apply([]) == []


def check_trim_tasks_deletes_old_finished_tasks_only(store: Store, clock: FakeClock) -> None:
    old_done = store.accept(PAYLOAD, request_id="old-done").task
    store.complete(old_done.task_id, [b"r0", b"r1"])
    old_failed = store.accept(PAYLOAD, request_id="old-failed").task
    store.fail(old_failed.task_id, "boom")
    old_open = store.accept(PAYLOAD, request_id="old-open").task  # never finished: kept for recovery
    clock.advance(100)
    new_done = store.accept(PAYLOAD, request_id="new-done").task
    store.complete(new_done.task_id, [b"n0"])
    clock.advance(100)
    assert store.trim_tasks(150) == 2
    for gone in (old_done, old_failed):
        assert store.find(gone.request_id) is None
        with pytest.raises(TaskNotFound):
            store.get(gone.task_id)
        with pytest.raises(TaskNotFound):
            store.results(gone.task_id)
    assert store.get(old_open.task_id).status is TaskStatus.ACCEPTED
    assert store.results(new_done.task_id) == [b"n0"]
    assert store.trim_tasks(150) == 0
    # a key whose task was deleted is new again: the same payload makes a new task
    again = store.accept(PAYLOAD, request_id="old-done")
    assert again.created and again.task.task_id != old_done.task_id


def check_trim_tasks_counts_from_the_finish(store: Store, clock: FakeClock) -> None:
    # accepted long ago (a long queue, or recovered after an outage) but finished just now: its
    # caller has yet to fetch the result, which stays for the whole keep time from the finish
    done = store.accept(PAYLOAD, request_id="late-done").task
    failed = store.accept(PAYLOAD, request_id="late-failed").task
    clock.advance(1000)
    store.complete(done.task_id, [b"r0"])
    store.fail(failed.task_id, "boom")
    clock.advance(1)
    assert store.trim_tasks(60) == 0
    assert store.results(done.task_id) == [b"r0"]
    assert store.get(failed.task_id).status is TaskStatus.FAILED
    clock.advance(60)
    assert store.trim_tasks(60) == 2


STORE_CHECKS: list[Callable[[Store, FakeClock], None]] = [
    check_accept_creates_accepted_task,
    check_accept_copies_payload,
    check_same_request_id_returns_first_task,
    check_request_id_with_other_payload_is_refused,
    check_concurrent_retries_create_one_task,
    check_claim_takes_a_lease_and_counts_attempts,
    check_accept_with_owner_leases_the_task,
    check_accepted_task_with_expired_lease_can_be_claimed,
    check_renew_extends_only_the_owners_leases,
    check_results_are_written_once,
    check_failed_task_stays_failed,
    check_recover_resumes_expired_and_fails_exhausted,
    check_unfinished_lists_open_tasks_oldest_first,
    check_list_and_count_tasks,
    check_unknown_task_raises,
    check_observations_feed_histories,
    check_retry_does_not_append_observations_again,
    check_accept_with_claim_stores_a_running_task,
    check_apply_runs_each_write_alone,
    check_trim_tasks_deletes_old_finished_tasks_only,
    check_trim_tasks_counts_from_the_finish,
]


def check_task_store(factory: StoreFactory) -> None:
    """Runs every check in ``STORE_CHECKS`` on a fresh store from ``factory``."""
    for check in STORE_CHECKS:
        clock = FakeClock()
        store = factory(clock)
        try:
            check(store, clock)
        finally:
            store.close()
