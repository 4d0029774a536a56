"""The ``predict`` stage: serve any registered model on the request's own feature columns.

The general form of :mod:`.serve` (which stays, for the MovieLens hybrid): the topology declares the
request's feature columns (:mod:`.features`), the task (:mod:`.tasks`: regression, binary or multi-class
classification) and the models (:mod:`.feature_models`: an ONNX graph, the labeling pipeline's text
model, the label prior, Velox's per-key online layer over any of them). Clipper's design (Crankshaw et
al., NSDI'17): batched calls per model under AIMD (section 4.3), a latency SLO past which a model is a
straggler and the reply uses the models that answered, or the prior flagged ``default=true`` (4.3.2),
and model selection by Exp4 (an ensemble) or Exp3 (one model per request) from feedback (5.2), with
losses from the task (squared error, log loss).

Rows come from the ``requests`` codec. A row with a ``label`` is **feedback** for the request whose
``correlation-id`` it carries; any other row is a **request**. Feedback may arrive minutes or days
later, on this topic or on its own (the topology's ``input.feedback_topic``): the stage keeps what each
request was answered with (:mod:`.served`) until its feedback arrives or the TTL passes, and learns
from *that* - the answers actually served, the online layer's base features of that moment. Feedback
that cannot be applied (a label that is no class, an unknown, expired or already applied correlation-id)
goes to the dead-letter topic with the reason and changes nothing.

Per micro-batch, in input order: consecutive requests are answered together; each piece of feedback is
applied where it stands. State: the policy's weights, the models' counters, the prior (snapshot); the
served records and the per-key weights (the keyed store).

Replies (``kind``: ``prediction``, ``feedback`` - an ack, only when feedback names a ``reply-to`` -, or
``error``) carry ``prediction`` (the number; for a binary task the positive class's probability),
``label`` (the class picked), ``probabilities`` (per class), ``model`` (``exp4``, the Exp3 arm, or
``default``), ``answered``/``scores`` (the models that answered in time and what each said), ``key``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from dawnstream.errors import ConfigError
from dawnstream.models.registry import Registry
from dawnstream.operators.base import Operator
from dawnstream.operators.serving.containers import RegistryVersions
from dawnstream.operators.serving.dispatch import Worker, answer_within
from dawnstream.operators.serving.feature_models import (
    FeatureModel,
    OnlineLayerModel,
    OnnxFeatureModel,
    PriorModel,
    build_feature_model,
)
from dawnstream.operators.serving.features import FeatureSchema, column_array
from dawnstream.operators.serving.latency import RecentLatencies
from dawnstream.operators.serving.selection import Exp3, Exp4
from dawnstream.operators.serving.serve import POLICIES, _column
from dawnstream.operators.serving.served import ServedLog
from dawnstream.operators.serving.tasks import Task, TaskMetrics
from dawnstream.topics.codecs.requests import TIMESTAMP

FUTURE_SKEW_MS = 5 * 60_000
"""How far ahead of the worker's clock a message's timestamp may be and still count as its event time, ms."""
REPLY_SCHEMA = pa.schema([
    ("correlation_id", pa.string()), ("reply_to", pa.string()), ("kind", pa.string()), ("key", pa.string()),
    ("prediction", pa.float64()), ("label", pa.string()), ("probabilities", pa.list_(pa.float64())),
    ("model", pa.string()), ("answered", pa.string()), ("scores", pa.string()), ("default", pa.bool_()),
    ("versions", pa.string()), ("latency_ms", pa.float64()), ("error", pa.string()),
])


class Predict(Operator):
    """Serve registered models on declared feature columns, learn from delayed feedback.

    Args:
        features: ``{column: type}`` of a request (``float64``, ``int64``, ``string``, ``category``,
            ``vector[N]``); a request that does not conform gets an error reply naming the field.
        task: ``regression``, ``binary`` or ``multiclass``.
        models: e.g. ``[{name: fraud, kind: onnx, model: fraud-score, inputs: {float_input: [amount, age]}},
            {name: personal, kind: online, over: fraud, key: merchant}, {kind: prior}]``.
        classes: class names, in the order the models' probabilities come (classification).
        categories: ``{column: [values]}`` allowed for ``category`` columns (optional).
        label_range: ``[low, high]`` of a regression's labels (clip, refuse outside, bandit scale).
        label_field: the feedback's label column (default ``label``).
        key_field: the column a reply's ``key`` echoes (default: the first online layer's key).
        feedback_ttl_s: how long a served prediction waits for its feedback, s of event time (default 7 days).
        policy: ``exp4`` or ``exp3``; eta, gamma, discount: as :class:`~.serve.Serve`.
        slo_ms: latency objective of a reply, ms (default 20). max_batch: the largest AIMD batch.
        registry, refresh_s, cache_size: as :class:`~.serve.Serve`.

    Raises:
        ConfigError: a bad schema, task, model list (unknown kind, ``over`` naming no model, duplicate
            names), policy or SLO - with the key path.
    """

    kind = "predict"
    stateful = True
    keyed_state = True

    def __init__(self, features: dict[str, str], task: str, models: list[dict[str, Any]],
                 classes: list[str] | None = None, categories: dict[str, list[str]] | None = None,
                 label_range: list[float] | None = None, label_field: str = "label", key_field: str | None = None,
                 feedback_ttl_s: float = 7 * 86400.0, policy: str = "exp4", slo_ms: float = 20.0,
                 registry: str | None = None, refresh_s: float = 1.0, cache_size: int = 100_000,
                 eta: float | None = None, gamma: float = 0.03, discount: float | None = None, max_batch: int = 4096,
                 name: str | None = None, _path: str = "stages") -> None:
        super().__init__(name)
        base = _path.rsplit(".", 1)[0] if "." in _path else _path
        self.schema = FeatureSchema(features, categories, f"{base}.features")
        self.task = Task(task, classes, label_range, base)
        if policy not in POLICIES:
            raise ConfigError(f"{base}.policy", f"expected one of {', '.join(POLICIES)}, got {policy!r}")
        if not slo_ms > 0:
            raise ConfigError(f"{base}.slo_ms", f"expected a positive number of ms, got {slo_ms!r}")
        if not feedback_ttl_s > 0:
            raise ConfigError(f"{base}.feedback_ttl_s", f"expected a positive number of s, got {feedback_ttl_s!r}")
        if int(max_batch) < 1:
            raise ConfigError(f"{base}.max_batch", f"expected at least 1 row, got {max_batch!r}")
        if label_field in self.schema.types:
            raise ConfigError(f"{base}.label_field", f"{label_field!r} is a feature column; feedback needs its own")
        if not isinstance(models, list) or not models:
            raise ConfigError(f"{base}.models", "expected a non-empty list of models")
        self.models: list[FeatureModel] = [
            build_feature_model(m, self.task, self.schema, slo_ms, cache_size, f"{base}.models.{j}")
            for j, m in enumerate(models)]
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ConfigError(f"{base}.models", f"model names must be unique, got {names}")
        for j, m in enumerate(self.models):
            m.aimd.max_size = int(max_batch)
            m.aimd.size = min(m.aimd.size, m.aimd.max_size)
            if isinstance(m, OnlineLayerModel) and (m.over not in names or m.over == m.name or
                                                    isinstance(self.models[names.index(m.over)], OnlineLayerModel)):
                raise ConfigError(f"{base}.models.{j}.over",
                                  f"expected the name of another, non-online model of this stage ({names}), "
                                  f"got {m.over!r}")
        layers = [m for m in self.models if isinstance(m, OnlineLayerModel)]
        for m in layers:
            if m.features is not None:
                base_model = self.models[names.index(m.over)]
                if not isinstance(base_model, OnnxFeatureModel):
                    raise ConfigError(f"{base}.models.{names.index(m.name)}.features",
                                      f"features come from an ONNX model's outputs; {m.over!r} is {base_model.kind}")
                if base_model.embedding not in (None, m.features):
                    raise ConfigError(f"{base}.models.{names.index(m.name)}.features",
                                      f"{m.over!r} already gives {base_model.embedding!r} to another layer")
                base_model.embedding = m.features
        self.key_field = key_field if key_field is not None else next((m.key for m in layers if m.key), None)
        if self.key_field is not None and self.key_field not in self.schema.types:
            raise ConfigError(f"{base}.key_field", f"expected a declared feature column, got {self.key_field!r}")
        self.label_field = label_field
        self.slo_s = float(slo_ms) / 1000.0
        self.registry = Registry(registry) if registry else Registry()
        self.refresh_s = float(refresh_s)
        self.scale = (self.task.range[1] - self.task.range[0]) ** 2 if self.task.range else 1.0
        self.policy: Exp4 | Exp3 = (
            Exp4(names, eta if eta is not None else 2.0, discount=discount if discount is not None else 0.01)
            if policy == "exp4" else
            Exp3(names, eta if eta is not None else 0.05, gamma, discount=discount if discount is not None else 0.001))
        self.served = ServedLog(int(feedback_ttl_s * 1000))
        self._workers: dict[str, Worker] = {}
        self.counters = {"requests": 0, "feedback": 0, "errors": 0, "defaults": 0, "stragglers": 0,
                         "feedback_refused": 0, "expired": 0}
        self.latency = RecentLatencies()
        self.metrics = {n: TaskMetrics(self.task) for n in [*names, "served"]}

    # -- protocol -----------------------------------------------------------------------------------
    def required_columns(self) -> set[str]:
        return set()  # validated row by row: a bad request gets an error reply, not a dead letter

    def passes_through(self) -> bool:
        return False

    def produced_columns(self) -> set[str]:
        return set(REPLY_SCHEMA.names)

    def bad_rows(self, batch: pa.RecordBatch) -> dict[int, str]:
        """Feedback that cannot be applied: a label that is not one (a class, a finite number in range), or a
        correlation-id with no served prediction to learn from (unknown, expired, already applied). The
        walk mirrors :meth:`process`: a request earlier in the batch makes its feedback known."""
        names = batch.schema.names
        if self.label_field not in names:
            return {}
        labels = batch.column(self.label_field).to_pylist()
        cids = _col(batch, "correlation_id")
        errors = _col(batch, "request_error")
        stamps = self._stamps(batch)
        feats = {c: _col(batch, c) for c in self.schema.names}
        self._attach()
        overlay: dict[str, dict[str, Any]] = {}  # what process() will have written by each row: cid -> record
        bad: dict[int, str] = {}
        for j, label in enumerate(labels):
            cid = str(cids[j])
            if errors[j] is not None:
                continue
            if label is None:
                if self.schema.problem({c: v[j] for c, v in feats.items()}) is None:
                    overlay[cid] = {"t": stamps[j]}  # answered, so recorded
                continue
            _, why = self.task.label(label)
            rec = None
            if why is None:
                rec, why = self.served.check(overlay[cid], cid, stamps[j]) if cid in overlay else \
                    self.served.lookup(cid, stamps[j])
            if why is not None or rec is None:
                bad[j] = str(why)
            else:
                overlay[cid] = {"t": rec["t"], "used": True}
        return bad

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        t0 = time.perf_counter()
        self._prepare()
        n = batch.num_rows
        cids, replies, errors = _col(batch, "correlation_id"), _col(batch, "reply_to"), _col(batch, "request_error")
        labels = _col(batch, self.label_field)
        feats = {c: _col(batch, c) for c in self.schema.names}
        stamps = self._stamps(batch)
        out: dict[str, list[Any]] = {f: [] for f in REPLY_SCHEMA.names}

        def reply(rows: list[int], kind: str, cols: dict[str, list[Any]]) -> None:
            m = len(rows)
            blank = [None] * m
            for f in REPLY_SCHEMA.names:
                out[f] += cols.get(f, blank)
            out["correlation_id"][-m:] = [cids[r] for r in rows]
            out["reply_to"][-m:] = [replies[r] for r in rows]
            out["kind"][-m:] = [kind] * m
            out["latency_ms"][-m:] = [(time.perf_counter() - t0) * 1000.0] * m

        segment: list[int] = []
        for j in range(n):
            if labels[j] is not None and errors[j] is None:
                if segment:
                    self._answer(segment, feats, cids, stamps, t0, reply)
                    segment = []
                self._feedback(j, labels[j], str(cids[j]), stamps[j], replies[j] is not None, reply)
                continue
            problem = errors[j] or self.schema.problem({c: v[j] for c, v in feats.items()})
            if problem is not None:
                self.counters["errors"] += 1
                reply([j], "error", {"error": [problem], "default": [False], "key": [self._key_text(feats, j)]})
            else:
                segment.append(j)
        if segment:
            self._answer(segment, feats, cids, stamps, t0, reply)
        if n:
            self.served.watermark = stamps[-1]
            self.counters["expired"] += self.served.expire(stamps[-1])
        if not out["kind"]:
            return []
        return [pa.RecordBatch.from_arrays([_column(out[f.name], f.type) for f in REPLY_SCHEMA], schema=REPLY_SCHEMA)]

    # -- requests -------------------------------------------------------------------------------------
    def _attach(self) -> None:
        if self.store is None:
            self.store = {}  # outside a runner (tests, `dawnstream process`): kept in the snapshot blob
        self.served.attach(self.store)

    def _prepare(self) -> None:
        self._attach()
        for m in self.models:
            m.store = self.store
            m.refresh(self.registry, self.refresh_s)

    def _stamps(self, batch: pa.RecordBatch) -> list[int]:
        """Each row's event time as the partition's watermark: the largest Kafka timestamp up to and including
        the row (ms). Feedback delays and expiry are measured on it, so a record expires at the same row
        however the stream is cut into batches (a timestamp that goes back never un-expires anything)."""
        now = int(time.time() * 1000)
        raw = batch.column(TIMESTAMP).to_pylist() if TIMESTAMP in batch.schema.names else [None] * batch.num_rows
        out: list[int] = []
        mark = self.served.watermark
        for v in raw:
            # A producer sets CreateTime as it likes: one message stamped next year would expire every record.
            # Beyond FUTURE_SKEW_MS ahead of this clock it counts as now (LogAppendTime on the topic is safer).
            t = now if v is None or int(v) > now + FUTURE_SKEW_MS else int(v)
            mark = max(mark, t)
            out.append(mark)
        return out

    def _key_text(self, feats: dict[str, list[Any]], j: int) -> str | None:
        if self.key_field is None:
            return None
        v = feats[self.key_field][j]
        return None if v is None else str(v)

    def _answer(self, rows: list[int], feats: dict[str, list[Any]], cids: list[Any], stamps: list[int], t0: float,
                reply: Callable[[list[int], str, dict[str, list[Any]]], None]) -> None:
        n = len(rows)
        cols = {c: column_array(self.schema.types[c], [feats[c][j] for j in rows]) for c in self.schema.names}
        deadline = t0 + self.slo_s
        layers = [m for m in self.models if isinstance(m, OnlineLayerModel)]
        direct = [m for m in self.models if not isinstance(m, OnlineLayerModel)]
        preds = answer_within(direct, lambda m: _chunked(m, cols, n, deadline), n, deadline, self._workers,
                              self.counters)
        for layer in layers:
            layer.base = preds.get(layer.over)
            if layer.base is not None:
                preds[layer.name] = layer.answer(cols, n)
            layer.base = None
        self._reply_segment(rows, preds, feats, cids, stamps, reply)
        self.latency.add((time.perf_counter() - t0) * 1000.0, n)

    def _reply_segment(self, rows: list[int], preds: dict[str, np.ndarray], feats: dict[str, list[Any]],
                       cids: list[Any], stamps: list[int],
                       reply: Callable[[list[int], str, dict[str, list[Any]]], None]) -> None:
        arms = self.policy.arms
        w = self.policy.weight_list()
        cols = {a: preds[a].tolist() for a in arms if a in preds}
        task = self.task
        vals: dict[str, list[Any]] = {f: [] for f in ("key", "prediction", "label", "probabilities", "model",
                                                      "answered", "scores", "default")}
        versions = ",".join(f"{m.name}:{m.version}" for m in self.models)
        width = task.k
        for r, j in enumerate(rows):
            full = {a: c[r] for a, c in cols.items() if all(math.isfinite(x) for x in c[r])}
            got = {a: v[:width] for a, v in full.items()}  # answers, less any embedding a layer reads
            key = self._key_text(feats, j)
            if not got:
                answer, model, prob = self._default(), "default", 1.0
            elif isinstance(self.policy, Exp4):
                den = sum(w[self.policy.index[a]] for a in got)
                answer = [sum(w[self.policy.index[a]] * v[i] for a, v in got.items()) / den if den > 0 else
                          sum(v[i] for v in got.values()) / len(got) for i in range(task.k)]
                model, prob = "exp4", 1.0
            else:
                model, prob = self.policy.choose(str(cids[j]))
                if model not in got:  # the drawn model straggled: the most trusted one that answered
                    model = max(got, key=lambda a: w[self.policy.index[a]])
                    prob = 0.0  # not a draw: learns nothing under Exp3
                else:
                    self._routed(model)
                answer = got[model]
            answer = task.clip(answer[0] if task.kind == "regression" else answer)
            late = len(full) < len(arms)  # a model missed the SLO: keep the features to ask it at feedback time
            self.served.record(str(cids[j]), stamps[j], key, full, model, prob,
                               [answer] if task.kind == "regression" else answer,
                               {c: feats[c][j] for c in self.schema.names} if late else None)
            vals["key"].append(key)
            self._fill(vals, answer)
            vals["model"].append(model)
            vals["answered"].append(",".join(got))
            vals["scores"].append(",".join(f"{a}={_score(task, v):.4f}" for a, v in got.items()) or None)
            vals["default"].append(not got)
        self.counters["requests"] += len(rows)
        self.counters["defaults"] += sum(vals["default"])
        reply(rows, "prediction", {**vals, "versions": [versions] * len(rows)})

    def _routed(self, model: str) -> None:
        self.counters[f"routed.{model}"] = self.counters.get(f"routed.{model}", 0) + 1

    def _fill(self, vals: dict[str, list[Any]], answer: Any) -> None:
        task = self.task
        if task.kind == "regression":
            vals["prediction"].append(float(answer))
            vals["label"].append(None)
            vals["probabilities"].append(None)
        else:
            vals["prediction"].append(float(answer[1]) if task.kind == "binary" else None)
            vals["label"].append(task.decide(answer))
            vals["probabilities"].append([float(v) for v in answer])

    def _default(self) -> list[float]:
        for m in self.models:
            if isinstance(m, PriorModel):
                return m.value()
        t = self.task
        return [sum(t.range) / 2 if t.range else 0.0] if t.kind == "regression" else [1.0 / t.k] * t.k

    # -- feedback -------------------------------------------------------------------------------------
    def _feedback(self, j: int, raw: Any, cid: str, t_ms: int, ack: bool,
                  reply: Callable[[list[int], str, dict[str, list[Any]]], None]) -> None:
        """Apply one piece of feedback (already checked by :meth:`bad_rows`; refused here too when it
        reaches the stage some other way, e.g. ``dawnstream process``)."""
        y, why = self.task.label(raw)
        rec = None
        if why is None:
            rec, why = self.served.lookup(cid, t_ms)
        if why is not None or rec is None or y is None:
            self.counters["feedback_refused"] += 1
            if ack:
                reply([j], "error", {"error": [why], "default": [False]})
            return
        self.served.consume(cid, t_ms)
        task = self.task
        full: dict[str, list[float]] = rec["a"]
        if "x" in rec:
            self._late_answers(rec, full)
        answers = {a: v[:task.k] for a, v in full.items()}
        served = task.clip(rec["s"][0] if task.kind == "regression" else rec["s"])
        for a, v in answers.items():
            self.metrics[a].add(task.clip(v[0] if task.kind == "regression" else v), y)
        self.metrics["served"].add(served, y)
        if answers:
            if isinstance(self.policy, Exp4):
                self.policy._penalise({self.policy.index[a]: task.bandit_loss(
                    task.clip(v[0] if task.kind == "regression" else v), y, self.scale) for a, v in answers.items()})
            elif rec["m"] in answers and rec["p"] > 0:
                v = answers[rec["m"]]
                loss = task.bandit_loss(task.clip(v[0] if task.kind == "regression" else v), y, self.scale)
                self.policy._penalise({self.policy.index[rec["m"]]: loss / max(rec["p"], 1e-6)})
        for m in self.models:
            if m.learns:
                m.learn(rec["k"], full, y)
        self.counters["feedback"] += 1
        if ack:
            vals: dict[str, list[Any]] = {f: [] for f in ("prediction", "label", "probabilities")}
            self._fill(vals, served)
            reply([j], "feedback", {**vals, "key": [rec["k"]], "model": [rec["m"]], "answered": [",".join(answers)],
                                    "default": [not answers]})

    def _late_answers(self, rec: dict[str, Any], full: dict[str, list[float]]) -> None:
        """Answers of the models that missed the request's SLO, computed now from the features the record
        kept (one row: the same bits as any other one-row call), and of the online layers over them - so the
        policy, the metrics and the layers learn from every piece of feedback whether a model was late or
        not (the reply itself went out without them). A model that fails now stays without an answer."""
        cols = {c: column_array(self.schema.types[c], [rec["x"][c]]) for c in self.schema.names}
        for m in self.models:
            if m.learns or m.name in full:
                continue
            try:
                row = m.answer(cols, 1)[0].tolist()
            except Exception:  # noqa: BLE001 - no answer from this model for this feedback
                continue
            if all(math.isfinite(v) for v in row):
                full[m.name] = row
        for m in self.models:
            if isinstance(m, OnlineLayerModel) and m.name not in full and m.over in full:
                m.base = np.asarray([full[m.over]])
                m.store = self.store
                try:
                    full[m.name] = m.answer(cols, 1)[0].tolist()
                finally:
                    m.base = None

    # -- status, state ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Live numbers: counters, the task's metrics per model and for the answers served (on feedback),
        AIMD sizes, versions, cache hits, the policy's weights, each online layer's chosen λ."""
        return {
            "counters": dict(self.counters),
            "metrics": {k: m.values() for k, m in self.metrics.items()},
            "scored": {k: m.n for k, m in self.metrics.items()},
            "batch": {m.name: m.aimd.size for m in self.models},
            "versions": {m.name: m.version for m in self.models},
            "weights": dict(zip(self.policy.arms, self.policy.weights().round(4).tolist(), strict=True)),
            "cache_hits": {m.name: getattr(m, "hits", 0) for m in self.models},
            "lam": {m.name: m.chosen_lam() for m in self.models if isinstance(m, OnlineLayerModel)},
            "slo_ms": self.slo_s * 1000.0, **self.latency.percentiles(),
        }

    def gauges(self) -> dict[str, float]:
        """``/metrics`` series: the counters; per model ``<metric>.<model>`` (``rmse``, or ``log_loss``,
        ``accuracy``, ``roc_auc``), ``scored.``, ``weight.``, ``batch.``, ``version.``, ``cache_hits.``, and
        ``lam.`` (the shrinkage each online layer answers with)."""
        st = self.status()
        out: dict[str, float] = {k: float(v) for k, v in st["counters"].items()}
        for model, values in st["metrics"].items():
            for metric, v in values.items():
                out[f"{metric}.{model}"] = float(v)
        for key in ("scored", "weights", "batch", "versions", "cache_hits", "lam"):
            name = {"weights": "weight", "versions": "version"}.get(key, key)
            for model, v in st[key].items():
                out[f"{name}.{model}"] = float(v)
        out["slo_ms"] = st["slo_ms"]
        out.update(self.latency.percentiles())
        return out

    def panel(self) -> dict[str, Any]:
        """:meth:`status`: the numbers a serving dashboard shows (counters, the task's metrics per model,
        AIMD batch sizes, versions, the policy's weights, p50/p99 against ``slo_ms``)."""
        registry = {m.name: m.model for m in self.models if isinstance(getattr(m, "model", None), str)}  # type: ignore[attr-defined]
        return {"kind": "serving", **self.status(), "registry_models": registry}

    def preflight(self) -> None:
        """Every registry model must have a promoted version that loads, or none promoted yet; the online
        layers' kernels are compiled before the first request.

        Raises:
            ModelError: a model's promoted versions all fail to load (each reason named).
        """
        for m in self.models:
            if isinstance(m, RegistryVersions):
                m.preflight(self.registry)
            elif isinstance(m, OnlineLayerModel):
                m.warm_up()

    def snapshot(self) -> bytes:
        self._attach()
        for m in self.models:
            m.store = self.store
            m.flush_users()
        return super().snapshot()

    def _state(self) -> Any:
        state: dict[str, Any] = {"policy": self.policy.state(), "models": {m.name: m.state() for m in self.models},
                                 "watermark": self.served.watermark,
                                 "counters": self.counters, "metrics": {k: m.state() for k, m in self.metrics.items()}}
        if isinstance(self.store, dict):  # no keyed store from a runner: the records travel in the blob
            state["store"] = {k: v.hex() for k, v in self.store.items()}
        return state

    def _load_state(self, state: Any) -> None:
        if not state:
            return
        self.policy.load(state.get("policy", {}))
        for m in self.models:
            m.load(state.get("models", {}).get(m.name, {}))
        self.counters.update(state.get("counters", {}))
        for k, v in state.get("metrics", {}).items():
            if k in self.metrics:
                self.metrics[k].load(v)
        if "store" in state and (self.store is None or isinstance(self.store, dict)):
            self.store = {k: bytes.fromhex(v) for k, v in state["store"].items()}
        self.served.watermark = int(state.get("watermark", self.served.watermark))
        self.served.forget_index()


def _chunked(m: FeatureModel, cols: dict[str, np.ndarray], n: int, deadline: float) -> np.ndarray:
    """``m``'s answers in chunks of its AIMD size; rows not reached by ``deadline`` stay NaN."""
    out = np.full((n, m.width), np.nan)
    start = 0
    while start < n:
        if start and not m.inline and time.perf_counter() >= deadline:
            break
        end = min(n, start + m.aimd.size)
        t0 = time.perf_counter()
        out[start:end] = m.answer({c: v[start:end] for c, v in cols.items()}, end - start)
        m.observe(end - start, (time.perf_counter() - t0) * 1000.0)
        start = end
    return out


def _col(batch: pa.RecordBatch, name: str) -> list[Any]:
    return batch.column(name).to_pylist() if name in batch.schema.names else [None] * batch.num_rows


def _score(task: Task, v: list[float]) -> float:
    """One number per model for the reply's ``scores``: the value (clipped to the label range), P(positive
    class), or the top probability."""
    return task.clip(v[0]) if task.kind == "regression" else v[1] if task.kind == "binary" else max(v)
