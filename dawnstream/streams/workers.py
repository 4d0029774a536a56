"""``dawnstream run TOPOLOGY --workers N``: N worker processes in one consumer group.

Each process runs a :class:`~dawnstream.streams.runner.KafkaRunner` with its own metrics port
(``metrics.port + i``). The parent forwards SIGTERM/SIGINT to the children, which finish their
batch, flush and commit before exiting.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from pathlib import Path
from typing import Any

from dawnstream.logs import configure, event, get_logger

log = get_logger(__name__)


def _worker_main(topology_path: str, worker: int, max_idle_s: float | None, bootstrap: str | None) -> None:
    import faulthandler
    import sys

    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)  # kill -USR1: dump stacks
    configure()
    from dawnstream.streams.config import load_topology
    from dawnstream.streams.runner import KafkaRunner

    topo = load_topology(topology_path)
    if bootstrap:
        topo.kafka.bootstrap = bootstrap
    runner = KafkaRunner(topo, worker=worker, create_topics=worker == 0)
    runner.install_signal_handlers()
    runner.run(max_idle_s=max_idle_s)


def run_workers(
    topology_path: str | Path, workers: int = 1, max_idle_s: float | None = None, bootstrap: str | None = None
) -> int:
    """Run ``workers`` processes until they stop; returns the worst exit code (0 = all clean).

    Worker 0 creates missing topics before the others start consuming.
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    ctx = mp.get_context("spawn")
    procs: list[Any] = []

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                p.terminate()  # SIGTERM: each worker commits its batch in hand and leaves the group

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(workers):
            p = ctx.Process(target=_worker_main, args=(str(topology_path), i, max_idle_s, bootstrap),
                            name=f"dawnstream-worker-{i}")
            p.start()
            procs.append(p)
            event(log, "worker.started", worker=i, pid=p.pid)
        for p in procs:
            p.join()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    codes = [p.exitcode or 0 for p in procs]
    event(log, "workers.stopped", exit_codes=codes)
    return max((abs(c) for c in codes), default=0)
