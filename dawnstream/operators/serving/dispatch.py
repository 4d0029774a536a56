"""Run a request segment through each model within the SLO: in the stage's thread, or on the model's own.

Clipper (Crankshaw et al., NSDI'17, section 4.3.2): a model that has not answered when the latency
objective expires is a straggler, and the reply goes out without it. A model expected to answer within a
millisecond (:meth:`~.containers.Slot.fast`), or one whose state feedback changes (``inline``), runs in
the stage's thread - handing it to a thread and back would cost more; any other model runs on a daemon
thread of its own (:class:`Worker`), which the stage stops waiting for at the deadline. A model still busy
with an earlier segment when the next one comes is given until that segment's deadline, then skipped.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from queue import SimpleQueue
from typing import Any

import numpy as np

from dawnstream.operators.serving.containers import Slot


class Worker:
    """One daemon thread running a model's batches, so a slow model can be left behind."""

    def __init__(self, name: str) -> None:
        self.jobs: SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = SimpleQueue()
        self.current: Future[Any] | None = None
        threading.Thread(target=self._loop, name=f"serve-{name}", daemon=True).start()

    def busy(self) -> bool:
        """True while the last job handed over has not finished."""
        return self.current is not None and not self.current.done()

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on this thread; its future."""
        fut: Future[Any] = Future()
        self.current = fut
        self.jobs.put((fut, fn))
        return fut

    def _loop(self) -> None:
        while True:
            fut, fn = self.jobs.get()
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the waiting stage as a straggler
                fut.set_exception(e)


def answer_within(models: Sequence[Slot], call: Callable[[Any], np.ndarray], rows: int, deadline: float,
                  workers: dict[str, Worker], counters: dict[str, int]) -> dict[str, np.ndarray]:
    """Each model's answers to one segment of ``rows`` requests, those that came by ``deadline``.

    Args:
        models: the models to ask.
        call: ``call(model)`` computes that model's answers (chunked by its AIMD size).
        rows: the segment's size (whether a model is expected to be fast on it).
        deadline: ``time.perf_counter()`` value at which the SLO expires.
        workers: the stage's threads, by model name (created here when missing).
        counters: the stage's counters; ``stragglers`` counts each model left out.

    Returns:
        ``{model name: answers}`` for the models that answered in time (a model that raised did not; it
        runs on its own thread from then on, :meth:`~.containers.Slot.fail`).
    """
    preds: dict[str, np.ndarray] = {}
    pending: dict[str, Future[Any]] = {}
    here = {m.name for m in models if m.inline or m.fast(rows)}
    for m in models:
        if m.name in here:
            continue
        worker = workers.get(m.name)
        if worker is None:
            worker = workers[m.name] = Worker(m.name)
        if worker.busy():  # still on an earlier batch: give it until this batch's deadline
            wait([worker.current], timeout=max(0.0, deadline - time.perf_counter()))  # type: ignore[list-item]
            if worker.busy():
                counters["stragglers"] += 1
                continue
        pending[m.name] = worker.submit(functools.partial(call, m))
    for m in models:
        if m.name in here:
            try:
                preds[m.name] = call(m)
            except Exception:  # noqa: BLE001 - a model that raises is a straggler
                m.fail()
                counters["stragglers"] += 1
    if pending:
        wait(list(pending.values()), timeout=max(0.0, deadline - time.perf_counter()))
    by_name = {m.name: m for m in models}
    for name, fut in pending.items():
        if fut.done() and fut.exception() is None:
            preds[name] = fut.result()
        else:
            counters["stragglers"] += 1
            if fut.done():
                by_name[name].fail()
    return preds
