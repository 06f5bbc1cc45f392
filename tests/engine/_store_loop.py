"""A store-backed engine loop that the kill tests run in a child process and SIGKILL.

``python -m tests.engine._store_loop DB LOG serve N`` accepts N tasks from a
client thread and runs them in two worker threads; ``... recover`` resumes
whatever a killed run left open and exits when nothing is open. Every line of
LOG is written after the store call it reports has returned (committed).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time

from atomic_usage.engine.store import TaskStore

LEASE_S = 0.3


def _log(fh: object, line: str, lock: threading.Lock) -> None:
    with lock:
        fh.write(line + "\n")  # type: ignore[attr-defined]
        fh.flush()  # type: ignore[attr-defined]


def main(db: str, log_path: str, mode: str, n: int = 0) -> None:
    store = TaskStore(db)
    owner = f"pid-{os.getpid()}"
    todo: queue.Queue[str | None] = queue.Queue()
    lock = threading.Lock()
    fh = open(log_path, "a", encoding="utf-8")  # noqa: SIM115

    open_ids: set[str] = set()
    stop = threading.Event()

    def renew() -> None:
        # What the engine does: keep leases of its own open tasks alive while it lives.
        while not stop.wait(LEASE_S / 3):
            with lock:
                ids = list(open_ids)
            store.renew(ids, owner=owner, lease_s=LEASE_S)

    def work() -> None:
        while (tid := todo.get()) is not None:
            task = store.claim(tid, owner=owner, lease_s=LEASE_S)
            if task is None:
                continue
            time.sleep(0.005)  # the "inference"
            stored = store.complete(tid, [f"{tid}:{owner}:{task.attempts}".encode()])
            _log(fh, f"completed {tid} {stored[0].decode()}", lock)
            with lock:
                open_ids.discard(tid)

    threading.Thread(target=renew, daemon=True).start()
    workers = [threading.Thread(target=work) for _ in range(2)]
    for w in workers:
        w.start()
    if mode == "serve":
        for i in range(n):
            acc = store.accept({"n": i, "pid": os.getpid()}, owner=owner, lease_s=LEASE_S)
            with lock:
                open_ids.add(acc.task.task_id)
            _log(fh, f"accepted {acc.task.task_id}", lock)
            todo.put(acc.task.task_id)
            time.sleep(0.002)
    else:
        deadline = time.monotonic() + 30
        while store.unfinished() and time.monotonic() < deadline:
            for t in store.recover(max_attempts=10).resumed:
                todo.put(t.task_id)
            time.sleep(LEASE_S / 3)
    for _ in workers:
        todo.put(None)
    for w in workers:
        w.join()
    stop.set()
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], *(int(a) for a in sys.argv[4:]))
