"""``make demo-labels``: labeling functions and an online label model on Rotten Tomatoes, end to end through Kafka.

Runs ``dawnstream run topologies/review-sentiment.yaml`` (the ``label`` stage: twelve sentiment LFs,
snorkel's label model refitted online from the vote statistics) and ``dawnstream models
train-end-model`` (the noise-aware end model, retrained from the probabilistic labels, registered and
promoted in a fresh registry) as processes of their own. This process streams the 12,808 review
snippets to the input topic, plays the human at the review queue (each row the label model is least
sure about comes back with its true class as ``gold``, which moves the LFs' accuracies), and reads the
probabilistic labels. The live view shows the labels' accuracy as the model learns (against the
snippets' real fresh/rotten class, which the topology never sees except through reviewed rows), the
LF table scraped from the worker's ``/metrics`` (coverage, overlaps, conflicts, learned and empirical
accuracy), and the end model's versions and accuracy on the rows no LF covers.

:func:`run_labels_demo` is what ``make demo-labels`` runs and what ``tests/kafka/test_demo_labels.py``
checks (on a prefix); :func:`main` exits 0 only when every row got its label, the label model beats
chance on covered rows, and an end model was trained and used.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from dawnstream.demo import exit_status
from dawnstream.demo_jobs import exited, failed, fresh_job, stage_samples, stop, worker_ready
from dawnstream.models.registry import REGISTRY_ENV, Registry
from dawnstream.sources import rotten_tomatoes
from dawnstream.streams.kafka_clients import base_settings, client_only

TOPOLOGY = Path(__file__).resolve().parent.parent / "topologies" / "review-sentiment.yaml"
LF_COLUMNS = ("coverage", "overlaps", "conflicts", "learned_accuracy", "emp_accuracy")
SHORT = {"learned_accuracy": "learned acc", "emp_accuracy": "emp acc"}  # the table fits 80 columns
# The last quarter of the stream waits for the worker's first end model: on a busy machine the trainer can
# register its first version after a short stream has gone by, and then no row would show the end model at work.
END_MODEL_GATE, GATE_RATE, GATE_WAIT_S = 0.75, 20.0, 60.0


def end_model_loaded(url: str) -> bool:
    """Whether some partition of the labeling worker at ``url`` labels with an end model (its
    ``end_model_version`` gauge is above 0); False while the worker does not answer."""
    return any(labels.get("name") == "end_model_version" and value > 0 for labels, value in stage_samples(url))


def scrape_lf_table(url: str) -> dict[str, dict[str, float]]:
    """Per LF, its statistics from a worker's ``/metrics``, over every partition (means weighted by the
    partitions' rows). Empty when the worker does not answer (yet)."""
    per: dict[str, dict[str, float]] = {}
    for labels, value in stage_samples(url):
        per.setdefault(labels["partition"], {})[labels["name"]] = value
    out: dict[str, dict[str, float]] = {}
    total = sum(g.get("rows", 0.0) for g in per.values()) or 1.0
    for g in per.values():
        w = g.get("rows", 0.0) / total
        for key, v in g.items():
            stat, _, lf = key.partition(".")
            if stat in LF_COLUMNS and lf:
                out.setdefault(lf, {}).setdefault(stat, 0.0)
                out[lf][stat] += w * v
    return out


@dataclass
class LabelsDemoResult:
    """What one run did.

    Attributes:
        rows: rows sent; dev_rows: of them, sent with their gold class; labelled: the other rows whose
            probabilistic label came back; reviewed: rows the simulated reviewer sent back with their gold class.
        covered_accuracy: accuracy of the label model's argmax on rows some LF covered (vs the true class).
        end_model_accuracy: accuracy on rows no LF covered, labelled by the end model.
        end_model_versions: versions registered by the trainer.
        lf_table: the LF statistics at the end (:func:`scrape_lf_table`).
    """

    rows: int = 0
    dev_rows: int = 0
    labelled: int = 0
    reviewed: int = 0
    covered_accuracy: float = float("nan")
    covered_share: float = float("nan")
    end_model_accuracy: float = float("nan")
    end_model_rows: int = 0
    end_model_versions: int = 0
    lf_table: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


def run_labels_demo(console: Console | None = None, limit: int | None = None, rate: float = 500.0,
                    train_every: int = 3000, dev_share: float = 0.05) -> LabelsDemoResult:
    """Stream Rotten Tomatoes through the labeling topology and report.

    Args:
        limit: only the first ``limit`` snippets (tests); default all 12,808.
        rate: snippets sent per second. From :data:`END_MODEL_GATE` of the stream on, snippets go at
            :data:`GATE_RATE` until the worker has loaded an end model (at most :data:`GATE_WAIT_S`).
        train_every: the end model is retrained after this many new labelled rows.
        dev_share: this share of the snippets (a fixed random draw) is sent with its class as ``gold``:
            a small labelled dev set, which gives the LFs' empirical accuracies on typical rows (the
            reviewed rows are the hardest ones).

    Raises:
        DawnstreamError: the broker cannot be reached.
    """
    console = console or Console()
    registry = Path.home() / ".cache" / "dawnstream" / "demo-labels" / "registry"
    topo = fresh_job(TOPOLOGY, registry)
    table = rotten_tomatoes()
    if limit is not None:
        table = table.slice(0, limit)
    ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
    truth = dict(zip(ids, table.column("label").to_pylist(), strict=True))
    n = len(ids)
    dev = np.random.default_rng(7).random(n) < dev_share
    end_name = topo.build_chain().operators[0].end_model  # type: ignore[attr-defined]
    console.print(f"[bold]dawnstream demo-labels[/]: {n:,} Rotten Tomatoes snippets through {topo.input.topic} at "
                  f"{topo.kafka.bootstrap}; registry {registry}")
    env = {**os.environ, REGISTRY_ENV: str(registry),
           "DAWNSTREAM_LOG_LEVEL": os.environ.get("DAWNSTREAM_LOG_LEVEL", "WARNING")}
    worker = subprocess.Popen([sys.executable, "-m", "dawnstream", "run", str(TOPOLOGY)], env=env)
    trainer = subprocess.Popen([sys.executable, "-m", "dawnstream", "models", "train-end-model", str(TOPOLOGY),
                                "--every", str(train_every), "--min-rows", str(max(train_every // 3, 100))],
                               env=env, stdout=subprocess.DEVNULL)
    procs = {"labeling worker": worker, "end-model trainer": trainer}
    metrics_url = f"http://{topo.metrics.host}:{topo.metrics.port}/metrics"
    reg = Registry(registry)
    deadline = time.monotonic() + 120
    while not worker_ready(metrics_url) and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    settings = base_settings(topo.kafka.bootstrap, topo.kafka.settings)
    producer = Producer({**client_only(settings, consumer=False), "linger.ms": 5})
    cbase = client_only(settings, consumer=True)
    readers = {}
    for out in topo.outputs:
        c = Consumer({**cbase, "group.id": f"demo-labels-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                      "isolation.level": "read_committed"})
        md = c.list_topics(out.topic, timeout=30).topics[out.topic]
        c.assign([TopicPartition(out.topic, p, 0) for p in md.partitions])
        readers[out.topic] = c
    labels_topic, queue_topic = topo.outputs[0].topic, topo.outputs[1].topic
    got: dict[int, dict[str, Any]] = {}
    reviewed: set[int] = set()
    result = LabelsDemoResult()
    t0 = time.perf_counter()
    state: dict[str, Any] = {"sent": 0, "lf": {}, "lf_at": 0.0}

    def drain() -> None:
        for m in readers[labels_topic].consume(5000, timeout=0):
            if m.error() is None and m.value():
                row = orjson.loads(m.value() or b"{}")
                if row.get("gold") is None:
                    got[row["id"]] = row
        for m in readers[queue_topic].consume(1000, timeout=0):
            if m.error() is None and m.value():
                row = orjson.loads(m.value() or b"{}")
                if row["id"] not in reviewed:  # the human's answer goes back on the input topic
                    reviewed.add(row["id"])
                    producer.produce(topo.input.topic, orjson.dumps({"id": row["id"], "text": row["text"],
                                                                     "gold": truth[row["id"]]}),
                                     str(row["id"]).encode())

    def accuracy(rows: list[dict[str, Any]]) -> float:
        return float(np.mean([r["label"] == truth[r["id"]] for r in rows])) if rows else float("nan")

    def view() -> Group:
        if time.monotonic() - state["lf_at"] > 1.0:
            state["lf"], state["lf_at"] = scrape_lf_table(metrics_url) or state["lf"], time.monotonic()
        rows = list(got.values())
        recent = rows[-2000:]
        covered = [r for r in recent if not r["abstained"]]
        by_end = [r for r in recent if r["labeled_by"].startswith("end_model")]
        versions = reg.versions(end_name) if end_name in reg.names() else []
        head = Table(title=f"review-sentiment: LFs + online label model through Kafka, {n:,} snippets",
                     caption="acc: the label model's, on the covered rows of the last 2,000; end acc: the end "
                             "model's, on the rows no LF covers", caption_justify="left", box=box.SIMPLE_HEAD,
                     padding=(0, 1, 0, 0), pad_edge=False)
        for col in ("elapsed", "sent", "labelled", "reviewed", "covered", "acc", "end model", "end acc"):
            head.add_column(col, justify="right", no_wrap=True)
        head.add_row(f"{time.perf_counter() - t0:.1f}s", f"{state['sent']:,}", f"{len(rows):,}",
                     f"{len(reviewed):,}", f"{len(covered) / max(len(recent), 1):.0%}", f"{accuracy(covered):.3f}",
                     f"v{versions[-1].version}" if versions else "-", f"{accuracy(by_end):.3f}" if by_end else "-")
        lfs = Table(title="labeling functions (over every row so far; accuracies: learned by the label model, "
                          "and empirical on the dev and reviewed rows)")
        lfs.add_column("LF", no_wrap=True)
        for col in LF_COLUMNS:
            lfs.add_column(SHORT.get(col, col), justify="right", no_wrap=True)
        for name, st in state["lf"].items():
            lfs.add_row(name, *(f"{st[c]:.3f}" if c in st else "-" for c in LF_COLUMNS))
        return Group(head, lfs)

    try:
        with Live(view(), console=console, refresh_per_second=4) as live:
            last, gate, gate_until = 0.0, int(n * END_MODEL_GATE), float("inf")
            clock = 0.0  # seconds of the send schedule; the gate's trickle stretches it
            for k in range(n):
                if k == gate:
                    gate_until = time.monotonic() + GATE_WAIT_S
                slow = k >= gate and time.monotonic() < gate_until and not end_model_loaded(metrics_url)
                if not slow and k >= gate:
                    gate_until = 0.0  # loaded, or waited long enough: full rate from here on
                if slow:  # a trickle from now on, even when the sender had fallen behind its schedule
                    clock = max(clock, time.perf_counter() - t0)
                clock += 1.0 / (GATE_RATE if slow else rate)
                ahead = clock - (time.perf_counter() - t0)
                if ahead > 0:
                    time.sleep(ahead)
                if exited(procs):
                    break
                body = {"id": ids[k], "text": texts[k]}
                if dev[k]:
                    body["gold"] = truth[ids[k]]
                producer.produce(topo.input.topic, orjson.dumps(body), str(ids[k]).encode())
                producer.poll(0)
                state["sent"] = k + 1
                if time.perf_counter() - last > 0.25:
                    drain()
                    live.update(view())
                    last = time.perf_counter()
            producer.flush(30)
            deadline = time.monotonic() + 90
            while exited(procs) is None and time.monotonic() < deadline and len(got) < n - int(dev.sum()):
                drain()
                producer.flush(5)
                live.update(view())
                time.sleep(0.2)
            drain()
            time.sleep(2.5)  # the worker refreshes its gauges every 2 s
            state["lf_at"] = 0.0
            live.update(view())
    finally:
        producer.flush(10)
        for c in readers.values():
            c.close()
        stop(procs)
    rows = list(got.values())
    covered = [r for r in rows if not r["abstained"]]
    by_end = [r for r in rows if r["labeled_by"].startswith("end_model")]
    result.seconds = time.perf_counter() - t0
    result.rows, result.labelled, result.reviewed = n, len(rows), len(reviewed)
    result.covered_accuracy, result.covered_share = accuracy(covered), len(covered) / max(len(rows), 1)
    result.end_model_accuracy, result.end_model_rows = accuracy(by_end), len(by_end)
    result.end_model_versions = len(reg.versions(end_name)) if end_name in reg.names() else 0
    result.lf_table = state["lf"]
    result.error = failed(procs)
    result.dev_rows = int(dev.sum())
    if result.error is None and result.labelled < n - result.dev_rows:
        result.error = f"{n - result.dev_rows - result.labelled} of {n} snippets got no label within 90 s"
    if result.error is None and not result.covered_accuracy > 0.6:
        result.error = f"the label model's accuracy on covered rows is {result.covered_accuracy:.3f}"
    if result.error is None and not result.end_model_versions:
        result.error = "no end model was trained"
    console.print(f"{result.labelled:,}/{n - result.dev_rows:,} snippets labelled in {result.seconds:.1f}s; "
                  f"label model accuracy on the {result.covered_share:.0%} covered: "
                  f"[bold]{result.covered_accuracy:.3f}[/]; end model "
                  f"({result.end_model_versions} versions) on {result.end_model_rows:,} uncovered rows: "
                  f"{result.end_model_accuracy:.3f}; {result.reviewed} rows reviewed")
    return result


def main() -> int:
    """``make demo-labels``: exit status 0 only when every snippet was labelled and the models learned."""
    return exit_status(run_labels_demo, "demo-labels")


if __name__ == "__main__":
    sys.exit(main())
