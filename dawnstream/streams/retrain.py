"""Background retraining of the offline model θ from the feedback on a serving topology's topic.

Velox (Crankshaw et al., CIDR'15, section 3) retrains the feature model offline, from all the
observations so far, while the online per-user weights keep learning; the new θ is then swapped
in. Here the :class:`Retrainer` reads the serving topic from its start (the topic *is* the training
set: feedback rows, those carrying a label), fits a biased MF by ALS every ``every`` new ratings,
registers the result - the θ artifact (npz) for each ``velox`` container and the full model as ONNX
for each ``onnx`` container of the ``serve`` stage - with its lineage (parent version, topic and
offset range per partition, metrics), and promotes it. Serving workers pick the promoted version up
between batches (:mod:`dawnstream.operators.serving.containers`). Run it with
``dawnstream models retrain <topology>`` next to the workers, or in-process (the demo does).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, TopicPartition

from dawnstream.errors import ConfigError
from dawnstream.logs import event, get_logger
from dawnstream.models.mf import fit_als
from dawnstream.models.registry import ModelVersion, Registry
from dawnstream.streams.config import Topology
from dawnstream.streams.kafka_clients import base_settings, client_only

log = get_logger(__name__)


@dataclass
class TrainingSet:
    """Feedback read so far: raw ids and labels, and the offset range per partition."""

    users: list[int] = field(default_factory=list)
    items: list[int] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)

    def add(self, partition: int, offset: int, value: bytes | None, fields: tuple[str, str, str]) -> bool:
        """Add one message if it is feedback (a JSON object with integer ids and a numeric label)."""
        try:
            row = orjson.loads(value) if value else None
        except orjson.JSONDecodeError:
            return False
        if not isinstance(row, dict):
            return False
        u, i, y = (row.get(f) for f in fields)
        if not (isinstance(u, int) and isinstance(i, int) and isinstance(y, (int, float)))\
                or isinstance(y, bool) or not np.isfinite(y):
            return False
        self.users.append(u)
        self.items.append(i)
        self.labels.append(float(y))
        self.partitions.append(partition)
        self.positions.append(offset)
        return True


class Retrainer:
    """Retrains and registers θ from a serving topology's input topic.

    Args:
        topology: a topology with a ``serve`` stage (its registry, model names and fields are used).
        every: retrain after this many new ratings.
        min_ratings: no model before this many.
        k, reg, iters: ALS hyperparameters (:func:`~dawnstream.models.mf.fit_als`).
        holdout: share of the newest ratings left out of the fit to measure RMSE, then trained on next time.

    Raises:
        ConfigError: the topology has no ``serve`` stage, or no container that comes from the registry.
    """

    def __init__(self, topology: Topology, every: int = 10_000, min_ratings: int = 1_000, k: int = 20,
                 reg: float = 10.0, iters: int = 12, holdout: float = 0.02) -> None:
        serve = next((op for op in topology.build_chain().operators if op.kind == "serve"), None)
        if serve is None:
            if any(op.kind == "predict" for op in topology.build_chain().operators):
                raise ConfigError("stages", "a predict stage serves your own model: retrain it with your own "
                                            "training command, then `dawnstream models register NAME FILE.onnx "
                                            "--topology TOPOLOGY --promote` (workers swap it in without a pause)")
            raise ConfigError("stages", "retraining needs a topology with a `serve` stage")
        self.topology = topology
        self.registry: Registry = serve.registry  # type: ignore[attr-defined]
        self.fields: tuple[str, str, str] = serve.fields  # type: ignore[attr-defined]
        containers = serve.containers  # type: ignore[attr-defined]
        self.npz_models = sorted({c.model for c in containers if c.kind == "velox"})
        self.onnx_models = sorted({c.model for c in containers if c.kind == "onnx"})
        if not self.npz_models and not self.onnx_models:
            raise ConfigError("stages", "the serve stage has no velox or onnx container to train a model for")
        self.every, self.min_ratings = int(every), int(min_ratings)
        self.k, self.reg, self.iters = int(k), float(reg), int(iters)
        self.holdout = float(holdout)
        self.data = TrainingSet()
        self.trained_at = 0
        self.versions: list[dict[str, ModelVersion]] = []
        self._stop = threading.Event()
        self._polled = -1e18
        self._usable_n = 0
        self._committed: dict[int, int] = {}
        self._mask = np.zeros(0, bool)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current step."""
        self._stop.set()

    def run(self, max_idle_s: float | None = None, max_versions: int | None = None,
            on_progress: Callable[[int], None] | None = None) -> list[dict[str, ModelVersion]]:
        """Read the topic and retrain as ratings arrive, until :meth:`stop` (or idle / enough versions).
        ``on_progress(ratings read)`` is called after each read (progress displays).

        Returns:
            The versions registered, one ``{model name: ModelVersion}`` per training.
        """
        t = self.topology
        # group.id: the serving group, only to read its committed offsets (this consumer never joins it).
        base = client_only(base_settings(t.kafka.bootstrap, t.kafka.settings), consumer=True)
        conf = {**base, "group.id": t.group_id, "enable.auto.commit": False, "auto.offset.reset": "earliest",
                "isolation.level": "read_committed"}
        consumer = Consumer(conf)
        try:
            md = consumer.list_topics(t.input.topic, timeout=30).topics.get(t.input.topic)
            parts = sorted(md.partitions) if md is not None and md.error is None else [0]
            consumer.assign([TopicPartition(t.input.topic, p, 0) for p in parts])
            idle = time.monotonic()
            while not self._stop.is_set():
                msgs = consumer.consume(5000, timeout=0.5)
                for m in msgs:
                    if m.error() is None:
                        self.data.add(m.partition() or 0, m.offset() or 0, m.value(), self.fields)
                if on_progress is not None:
                    on_progress(len(self.data.labels))
                if msgs:
                    idle = time.monotonic()
                elif max_idle_s is not None and time.monotonic() - idle > max_idle_s:
                    break
                n = self._usable(consumer, parts)
                if n >= self.min_ratings and n - self.trained_at >= (self.every if self.trained_at else 0):
                    self.train(n)
                    if max_versions is not None and len(self.versions) >= max_versions:
                        break
        finally:
            consumer.close()
        return self.versions

    def _usable(self, consumer: Consumer, parts: list[int]) -> int:
        """How many ratings read so far the serving workers have committed (a cheap check every ~2 s)."""
        now = time.monotonic()
        if now - self._polled < 2.0:
            return self._usable_n
        self._polled = now
        try:
            got = consumer.committed([TopicPartition(self.topology.input.topic, p) for p in parts], timeout=10)
        except Exception:  # noqa: BLE001 - the group coordinator may be moving: ask again later
            return self._usable_n
        self._committed = {tp.partition: tp.offset for tp in got if tp.offset >= 0}
        d = self.data
        parts_a, pos_a = np.asarray(d.partitions, np.int64), np.asarray(d.positions, np.int64)
        limit = np.asarray([self._committed.get(int(p), 0) for p in range(int(parts_a.max()) + 1)]) \
            if len(parts_a) else np.zeros(0, np.int64)
        self._mask = pos_a < limit[parts_a] if len(parts_a) else np.zeros(0, bool)
        self._usable_n = int(self._mask.sum())
        return self._usable_n

    def train(self, usable: int | None = None) -> dict[str, ModelVersion]:
        """Fit on the ratings read so far that the serving workers have committed (all of them when
        called directly), less the holdout; register and promote every model."""
        d = self.data
        mask = self._mask if usable is not None else np.ones(len(d.labels), bool)
        users = np.asarray(d.users, np.int64)[mask]
        items = np.asarray(d.items, np.int64)[mask]
        labels = np.asarray(d.labels)[mask]
        n = len(labels)
        cut = n - int(n * self.holdout) if n * self.holdout >= 1 else n
        t0 = time.perf_counter()
        model = fit_als(users[:cut], items[:cut], labels[:cut], k=self.k, reg=self.reg, iters=self.iters)
        fit_s = time.perf_counter() - t0
        metrics: dict[str, Any] = {"ratings": cut, "fit_s": round(fit_s, 3)}
        if cut < n:
            metrics["holdout_rmse"] = float(np.sqrt(np.mean((model.predict(users[cut:], items[cut:])
                                                             - labels[cut:]) ** 2)))
        parts, pos = np.asarray(d.partitions)[mask], np.asarray(d.positions)[mask]
        lineage = {"topic": self.topology.input.topic,
                   "offsets": {str(p): [int(pos[parts == p].min()), int(pos[parts == p].max())]
                               for p in sorted(set(parts.tolist()))}}
        out: dict[str, ModelVersion] = {}
        for names, fmt, blob in ((self.npz_models, "npz", model.to_npz), (self.onnx_models, "onnx", model.to_onnx)):
            if not names:
                continue
            artifact = blob()
            for name in names:
                parent = self.registry.promoted_version(name)
                mv = self.registry.register(name, artifact, fmt, parent=parent, training_data=lineage,
                                            metrics=metrics, params={"k": self.k, "reg": self.reg, "iters": self.iters,
                                                    "algorithm": "biased MF, ALS"})
                self.registry.promote(name, mv.version)
                out[name] = mv
        self.trained_at = int(mask.sum()) if usable is not None else n
        self.versions.append(out)
        event(log, "retrain.registered", ratings=cut, fit_s=round(fit_s, 3), metrics=metrics,
              versions={k: v.version for k, v in out.items()})
        return out
