"""``dawnstream run TOPOLOGY --workers N``: N worker processes in one consumer group, supervised.

Each process runs a :class:`~dawnstream.streams.runner.KafkaRunner` with its own metrics port
(``metrics.port + i``). The parent creates the job's topics once, then starts the workers and
watches them. SIGTERM/SIGINT to the parent is forwarded: each worker finishes its batch, commits
and leaves the group.

When a worker dies, the cause decides what happens (the choice Kafka Streams' uncaught-exception
handler offers as SHUTDOWN_APPLICATION and REPLACE_THREAD):

- **it failed** (an error that cannot heal: a missing topic, refused credentials, a fenced
  producer, or an operator bug; the worker exits with status 1 after logging ``runner.failed``):
  the job shuts down. The parent stops the other workers and exits with status 1, and the CLI
  prints the reason. Retrying would hit the same error again, and a bug triggered by a message
  would follow that message's partition from worker to worker. Nothing is lost: the failed batch
  was never committed.
- **it was killed by a signal** (the OOM killer, ``kill -9``): its partitions move to the others
  at once (group rebalance, state restored from the changelog). The parent starts a replacement
  with the same index, whose transactional id fences the dead worker and aborts what it left open.
  That happens at most :data:`MAX_REPLACEMENTS` times per worker index in :data:`REPLACEMENT_WINDOW_S`;
  then the job shuts down as above.
- **it stopped cleanly** (``--max-idle`` reached): the others carry on until they stop too.

The parent's exit status is 0 when every worker stopped cleanly, 1 when the job failed.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from dawnstream.logs import configure, event, get_logger

log = get_logger(__name__)
MAX_REPLACEMENTS = 3
REPLACEMENT_WINDOW_S = 600.0
FAILED = 1


@dataclass
class JobOutcome:
    """How a supervised job ended: ``exit_code`` 0 (all workers stopped cleanly) or 1, and the first
    failure's reason (``"worker 1: <error>"``) when there was one."""

    exit_code: int = 0
    error: str | None = None


def _stop_when_orphaned(runner: Any, every_s: float = 0.5) -> None:
    """Stop the worker (finish the batch, commit, leave the group) if its supervisor dies, even by
    SIGKILL: an orphan would keep consuming as a group member nobody supervises or can stop."""
    import os
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(every_s)
            if os.getppid() != parent:
                event(log, "worker.orphaned", parent=parent)
                runner.stop()
                return

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _worker_main(topology_path: str, worker: int, max_idle_s: float | None, bootstrap: str | None,
                 failures: Any, part: int = 0, slot: int | None = None, restarts: int = 0) -> None:
    import faulthandler
    import sys

    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)  # kill -USR1: dump stacks
    configure()
    try:
        from dawnstream.streams.config import load_topology
        from dawnstream.streams.runner import KafkaRunner

        topo = load_topology(topology_path).split()[part]
        if bootstrap:
            topo.kafka.bootstrap = bootstrap
        runner = KafkaRunner(topo, worker=worker, create_topics=False,  # the parent created them
                             restarts=restarts)
        runner.install_signal_handlers()
        _stop_when_orphaned(runner)
        import gc

        gc.freeze()  # the startup's objects (modules, compiled kernels) need no more collections: shorter GC pauses
        runner.run(max_idle_s=max_idle_s)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which decides for the job
        from dawnstream.errors import DawnstreamError

        failures.put((worker if slot is None else slot,
                      str(e) if isinstance(e, DawnstreamError) else f"{type(e).__name__}: {e}"))
        sys.exit(FAILED)


def _create_topics(topology_path: str | Path, bootstrap: str | None) -> None:
    from dawnstream.streams.config import load_topology
    from dawnstream.streams.kafka_clients import ensure_job_topics

    for t in load_topology(topology_path).split():
        if bootstrap:
            t.kafka.bootstrap = bootstrap
        ensure_job_topics(t)


def run_workers(
    topology_path: str | Path, workers: int = 1, max_idle_s: float | None = None, bootstrap: str | None = None,
    create_topics: bool = True,
) -> JobOutcome:
    """Run ``workers`` processes until they all stop, or until one fails (see the module docstring).

    Args:
        create_topics: create the job's missing topics before the workers start; when False, a
            worker that finds one missing fails the job naming it.

    Raises:
        ValueError: ``workers`` < 1.
        DawnstreamError: the topics could not be created (broker unreachable...).
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    from dawnstream.streams.config import load_topology

    names = [t.name for t in load_topology(topology_path).split()]  # a group_by: two halves, each N workers
    if create_topics:
        _create_topics(topology_path, bootstrap)
    ctx = mp.get_context("spawn")
    failures = ctx.SimpleQueue()
    procs: dict[int, Any] = {}
    slots = len(names) * workers  # slot k: worker k % workers of half k // workers
    replaced: dict[int, list[float]] = {k: [] for k in range(slots)}
    restarts: dict[int, int] = {k: 0 for k in range(slots)}  # replacements since the job started, per slot

    def label(k: int) -> str:
        return str(k) if len(names) == 1 else f"{k % workers} of {names[k // workers]}"
    outcome = JobOutcome()
    stopping = False

    def start(k: int) -> None:
        p = ctx.Process(target=_worker_main, args=(str(topology_path), k % workers, max_idle_s, bootstrap, failures,
                                                   k // workers, k, restarts[k]),
                        name=f"dawnstream-worker-{k}")
        p.start()
        procs[k] = p
        event(log, "worker.started", worker=label(k), pid=p.pid)

    def stop_all() -> None:
        nonlocal stopping
        stopping = True
        for p in procs.values():
            if p.is_alive() and p.pid is not None:
                p.terminate()  # SIGTERM: each worker commits its batch in hand and leaves the group

    def fail(i: int, reason: str) -> None:
        if outcome.error is None:
            outcome.exit_code, outcome.error = FAILED, f"worker {label(i)}: {reason}"
            event(log, "job.failed", worker=label(i), error=reason)
        stop_all()

    old = {s: signal.signal(s, lambda *_: stop_all()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for k in range(slots):
            start(k)
        live = dict(procs)
        while live:
            wait([p.sentinel for p in live.values()])
            for i, p in list(live.items()):
                if p.is_alive():
                    continue
                p.join()
                del live[i]
                code = p.exitcode or 0
                reasons = {}
                while not failures.empty():
                    w, why = failures.get()
                    reasons[w] = why
                if code == 0 or stopping and code == -signal.SIGTERM:
                    event(log, "worker.stopped", worker=label(i))
                elif code > 0:
                    fail(i, reasons.get(i, f"exited with status {code}"))
                elif stopping:
                    event(log, "worker.stopped", worker=label(i), signal=-code)
                else:
                    recent = [t for t in replaced[i] if time.monotonic() - t < REPLACEMENT_WINDOW_S]
                    event(log, "worker.killed", worker=label(i), signal=-code, replacements=len(recent))
                    if len(recent) >= MAX_REPLACEMENTS:
                        fail(i, f"killed by signal {-code} {len(recent) + 1} times in {REPLACEMENT_WINDOW_S:.0f} s")
                        continue
                    replaced[i] = [*recent, time.monotonic()]
                    restarts[i] += 1
                    start(i)
                    live[i] = procs[i]
                    event(log, "worker.replaced", worker=label(i), pid=procs[i].pid)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    event(log, "workers.stopped", exit_code=outcome.exit_code)
    return outcome
