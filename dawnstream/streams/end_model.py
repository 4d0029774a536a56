"""Background training of the noise-aware end model from a labeling topology's probabilistic labels.

Snorkel's pipeline ends with a discriminative model trained on the label model's output (Ratner et
al., VLDB'18, section 3.3). Here :class:`EndModelTrainer` reads the ``label`` stage's first output
topic (the probabilistic labels, ``read_committed``) from its start, and every ``every`` new rows fits
a :class:`~dawnstream.models.text_model.HashedTextModel` on them: covered rows weighted by their
class probabilities, rows with a gold class as hard labels, rows no LF covered left out (their
probabilities are only the prior). The newest ``holdout`` share of the gold rows is kept out of the
fit to measure accuracy. Each fit is registered with its lineage (topic, offsets per partition,
metrics) and promoted; the ``label`` stage, given ``end_model``, then labels the rows no LF covers
with the promoted version. Run it with ``dawnstream models train-end-model <topology>`` next to the
workers, or in-process (the demo does).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, TopicPartition

from dawnstream.errors import ConfigError
from dawnstream.logs import event, get_logger
from dawnstream.models.registry import ModelVersion, Registry
from dawnstream.models.text_model import HashedTextModel
from dawnstream.streams.config import Topology
from dawnstream.streams.kafka_clients import base_settings, client_only

log = get_logger(__name__)
SETTLE_S = 2.0
"""``until_caught_up``: how long the labels topic must stay quiet once the workers committed the whole input
(rows they hold for other partitions' blocks are labelled after their offsets commit)."""
MAX_ROWS = 100_000
"""The newest rows kept for training (older ones are dropped: the stream may drift)."""


@dataclass
class LabelledRows:
    """Rows read from the probabilistic labels topic, with where they came from."""

    texts: list[str] = field(default_factory=list)
    probs: list[list[float]] = field(default_factory=list)
    gold: list[int] = field(default_factory=list)  # -1: none
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    seen: int = 0

    def add(self, partition: int, offset: int, value: bytes | None, text: str, k: int) -> None:
        """Keep one output row if it can teach the model (covered by an LF, or with a gold class)."""
        self.seen += 1
        try:
            row = orjson.loads(value) if value else None
        except orjson.JSONDecodeError:
            return
        if not isinstance(row, dict) or not isinstance(row.get(text), str):
            return
        gold = row.get("gold")
        gold = int(gold) if isinstance(gold, int) and 0 <= gold < k else -1
        probs = row.get("probs")
        if gold < 0 and (row.get("abstained") or not isinstance(probs, list) or len(probs) != k):
            return
        self.texts.append(row[text])
        self.probs.append([float(v) for v in probs] if gold < 0 and isinstance(probs, list)
                          else [float(y == gold) for y in range(k)])
        self.gold.append(gold)
        self.partitions.append(partition)
        self.offsets.append(offset)
        if len(self.texts) > MAX_ROWS:
            for col in (self.texts, self.probs, self.gold, self.partitions, self.offsets):
                del col[: len(col) - MAX_ROWS]


class EndModelTrainer:
    """Trains, registers and promotes the end model of a topology's ``label`` stage.

    Args:
        topology: a topology with a ``label`` stage whose ``end_model`` names the registered model.
        every: rows read between two fits.
        min_rows: no model before this many usable rows.
        holdout: share of the newest gold rows kept out of the fit to measure accuracy.

    Raises:
        ConfigError: no ``label`` stage, or it names no ``end_model``.
    """

    def __init__(self, topology: Topology, every: int = 2000, min_rows: int = 500, holdout: float = 0.2) -> None:
        stage = next((op for op in topology.build_chain().operators if op.kind == "label"), None)
        if stage is None:
            raise ConfigError("stages", "training an end model needs a topology with a `label` stage")
        if not stage.end_model:  # type: ignore[attr-defined]
            raise ConfigError("stages", "the label stage names no `end_model` (the registered name to train)")
        self.topology = topology
        self.name: str = stage.end_model  # type: ignore[attr-defined]
        self.registry: Registry = stage.registry  # type: ignore[attr-defined]
        self.text: str = stage.text  # type: ignore[attr-defined]
        self.k: int = stage.k  # type: ignore[attr-defined]
        self.topic = topology.outputs[0].topic
        self.every, self.min_rows, self.holdout = int(every), int(min_rows), float(holdout)
        self.rows = LabelledRows()
        self.trained_at = 0
        self.versions: list[ModelVersion] = []
        self.lag: int | None = None
        """Input records the labeling workers had yet to commit at the last check (``until_caught_up``)."""
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current step."""
        self._stop.set()

    def run(self, max_idle_s: float | None = None, max_versions: int | None = None,
            train: bool = True, until_caught_up: bool = False,
            on_progress: Callable[[int], None] | None = None) -> list[ModelVersion]:
        """Read the labels topic and train as rows arrive (``train``; else only read), until :meth:`stop`
        (or idle / enough versions).

        Args:
            max_idle_s: stop after this many seconds (s) without progress: no labelled row read and,
                with ``until_caught_up``, no new offset committed by the labeling workers.
            max_versions: stop after registering this many versions.
            train: fit as rows arrive (False: only read, e.g. to fit once at the end).
            until_caught_up: stop as soon as the labeling workers' consumer group has committed the
                input topic up to its end offsets (read as of each check) and the labels topic has
                nothing more to read: everything produced so far is labelled and read, however slow
                the workers were to start.
            on_progress: called with the labelled rows read so far after each read (progress displays).
        """
        t = self.topology
        base = client_only(base_settings(t.kafka.bootstrap, t.kafka.settings), consumer=True)
        consumer = Consumer({**base, "group.id": f"dawnstream.{t.name}.end-model-{uuid.uuid4().hex[:6]}",
                             "enable.auto.commit": False, "isolation.level": "read_committed"})
        # group.id: the labeling workers' group, only to read its committed offsets (it never joins it).
        probe = Consumer({**base, "group.id": t.group_id, "enable.auto.commit": False}) if until_caught_up else None
        try:
            md = None
            deadline = time.monotonic() + (30 if max_idle_s is None else max_idle_s)
            while md is None and time.monotonic() < deadline and not self._stop.is_set():
                md = consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
                if md is None or md.error is not None:
                    md = None
                    time.sleep(0.5)  # the workers create the topic when they start
            parts = sorted(md.partitions) if md is not None else [0]
            consumer.assign([TopicPartition(self.topic, p, 0) for p in parts])
            idle = time.monotonic()
            committed: list[int] = []
            while not self._stop.is_set():
                msgs = consumer.consume(5000, timeout=0.5)
                for m in msgs:
                    if m.error() is None:
                        self.rows.add(m.partition() or 0, m.offset() or 0, m.value(), self.text, self.k)
                if on_progress is not None:
                    on_progress(self.rows.seen)
                if msgs:
                    idle = time.monotonic()
                elif probe is not None:
                    now, lag = self._input_lag(probe)
                    self.lag = lag
                    if now != committed:  # the workers moved on: their labels are on the way
                        committed, idle = now, time.monotonic()
                    elif lag == 0 and time.monotonic() - idle > SETTLE_S:
                        break
                if not msgs and max_idle_s is not None and time.monotonic() - idle > max_idle_s:
                    break
                due = self.rows.seen - self.trained_at >= (self.every if self.versions else 0)
                if train and len(self.rows.texts) >= self.min_rows and due:
                    self.train()
                    if max_versions is not None and len(self.versions) >= max_versions:
                        break
        finally:
            consumer.close()
            if probe is not None:
                probe.close()
        return self.versions

    def _input_lag(self, probe: Consumer) -> tuple[list[int], int | None]:
        """The labeling group's committed offsets on the input topic, and how many records it has yet
        to commit (None: it has committed nothing, or the broker did not answer)."""
        topic = self.topology.input.topic
        try:
            md = probe.list_topics(topic, timeout=10).topics.get(topic)
            if md is None or md.error is not None:
                return [], None
            parts = sorted(md.partitions)
            got = probe.committed([TopicPartition(topic, p) for p in parts], timeout=10)
            highs = [probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts]
        except Exception:  # noqa: BLE001 - a coordinator moving or a timeout: no answer this time
            return [], None
        offsets = [tp.offset for tp in got]
        if all(o < 0 for o in offsets):
            return offsets, None
        return offsets, int(sum(max(0, h - max(o, 0)) for o, h in zip(offsets, highs, strict=True)))

    def train(self) -> ModelVersion:
        """Fit on the rows read so far (less the gold holdout), register and promote.

        Raises:
            ValueError: no usable rows.
        """
        r = self.rows
        gold = np.asarray(r.gold, np.int64)
        gold_at = np.flatnonzero(gold >= 0)
        held = gold_at[len(gold_at) - int(len(gold_at) * self.holdout):] if len(gold_at) >= 10 else gold_at[:0]
        fit_on = np.setdiff1d(np.arange(len(r.texts)), held)
        t0 = time.perf_counter()
        model = HashedTextModel.fit([r.texts[i] for i in fit_on], np.asarray(r.probs, float)[fit_on])
        metrics: dict[str, Any] = {"rows": int(len(fit_on)), "gold_rows": int(len(gold_at) - len(held)),
                                   "fit_s": round(time.perf_counter() - t0, 3)}
        if len(held):
            pred = model.predict_proba([r.texts[i] for i in held]).argmax(axis=1)
            metrics["holdout_gold_accuracy"] = float((pred == gold[held]).mean())
            metrics["holdout_gold_rows"] = int(len(held))
        parts, offs = np.asarray(r.partitions), np.asarray(r.offsets)
        lineage = {"topic": self.topic, "offsets": {str(p): [int(offs[parts == p].min()), int(offs[parts == p].max())]
                                                    for p in sorted(set(parts.tolist()))}}
        mv = self.registry.register(self.name, model.to_npz(), "npz", parent=self.registry.promoted_version(self.name),
                                    training_data=lineage, metrics=metrics,
                                    params={"algorithm": "hashed 1-2-grams + logistic regression, noise-aware",
                                            "n_features": model.n_features, "classes": self.k})
        self.registry.promote(self.name, mv.version)
        self.trained_at = self.rows.seen
        self.versions.append(mv)
        event(log, "end_model.registered", model=self.name, version=mv.version, metrics=metrics)
        return mv
