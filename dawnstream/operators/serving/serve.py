"""The ``serve`` stage: answer prediction requests, learn from feedback, within a latency SLO.

Input rows come from the ``requests`` codec (``correlation_id``, ``reply_to`` and the JSON body). A
row with a label (``rating``) is **feedback**; any other row is a **request**. Both arrive on the
same topic, keyed by user, so one partition sees a user's requests and feedback in the order they
were sent, and holds that user's weights (Kafka Streams calls this co-partitioning; here it is one
topic, so it cannot be violated).

Per micro-batch, in input order:

- consecutive requests form a segment answered together: each model container predicts it in
  chunks of its AIMD batch size (:mod:`.aimd`); containers that are not ``inline`` run on their own
  thread, and whatever has not answered when the SLO expires is a straggler - the reply uses the
  models that answered, or the default (the running mean) flagged ``default=true`` (Clipper, NSDI'17,
  section 4.3.2);
- feedback is first scored against every model's prediction made *before* learning it (progressive
  validation), which drives the selection policy (Exp4 ensemble or Exp3, :mod:`.selection`), then
  learned by the containers that learn (Velox, the mean);
- a request whose body was malformed (``request_error`` from the codec) or lacks a user or item gets
  an error reply with the reason.

Replies are rows for the ``requests`` codec: it addresses each to its ``reply_to`` topic with the
``correlation-id`` header echoed. Feedback gets a reply only when it names a ``reply-to`` (an ack
carrying the prediction made before learning it).

State: the selection weights, the containers' AIMD sizes and counters (the snapshot), and each
user's Velox weights (the keyed store, ``<container>/<user>``), so the runner's checkpoints restore a
partition after a crash with every piece of feedback applied once.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from dawnstream.errors import ConfigError
from dawnstream.models.registry import Registry
from dawnstream.operators.base import Operator
from dawnstream.operators.serving.containers import Container, RegisteredContainer, build_container
from dawnstream.operators.serving.dispatch import Worker, answer_within
from dawnstream.operators.serving.latency import RecentLatencies
from dawnstream.operators.serving.selection import Exp3, Exp4

POLICIES = ("exp4", "exp3")
REPLY_SCHEMA = pa.schema([
    ("correlation_id", pa.string()), ("reply_to", pa.string()), ("kind", pa.string()),
    ("user_id", pa.int64()), ("item_id", pa.int64()), ("prediction", pa.float64()), ("model", pa.string()),
    ("answered", pa.string()), ("scores", pa.string()), ("default", pa.bool_()), ("versions", pa.string()),
    ("latency_ms", pa.float64()), ("error", pa.string()),
])
"""Columns of every reply (``kind``: ``prediction``, ``feedback`` or ``error``). ``answered``: the models that
answered in time; ``scores``: what each of them said (``velox=3.912,svd=3.801``); ``model``: the policy's
pick (``exp4`` for the ensemble, the arm under Exp3, ``default`` when none answered)."""


class Serve(Operator):
    """Clipper-style serving and Velox-style learning over one requests topic.

    Args:
        models: containers, e.g. ``[{name: velox, kind: velox, model: movielens-theta}, {name: svd,
            kind: onnx, model: movielens-svd}, {kind: mean}]`` (see :mod:`.containers`).
        policy: ``exp4`` (weighted ensemble of every model) or ``exp3`` (one model per request).
        slo_ms: latency objective of a reply, ms from the moment its batch reaches the stage (default 20).
        registry: registry root (default ``$DAWNSTREAM_REGISTRY`` or ``~/.local/share/dawnstream/registry``).
        refresh_s: how often each container looks for a newly promoted version, s.
        user_field, item_field, label_field: input columns (int64, int64, float64).
        rating_range: ``[low, high]``: predictions are clipped to it and losses scaled by its width²; feedback
            outside it gets an error reply and trains nothing.
        cache_size: LRU entries per ONNX container ((version, user, item) -> prediction).
        eta: learning rate of the selection weights (default 2.0 for exp4, 0.05 for exp3).
        gamma: Exp3's exploration share.
        discount: per-feedback decay of the selection weights towards uniform (forgets after ~1/discount
            pieces of feedback; default 0.01 for exp4, which then tracks the best mix of the moment, 0.001
            for exp3, whose importance-weighted losses need the longer memory).
        max_batch: the largest batch AIMD may give a model (1 turns batching off: the baseline it is
            measured against).

    Raises:
        ConfigError: an unknown policy or container kind, a missing ``model``, a bad range or SLO.
    """

    kind = "serve"
    stateful = True
    keyed_state = True

    def __init__(self, models: list[dict[str, Any]], policy: str = "exp4", slo_ms: float = 20.0,
                 registry: str | None = None, refresh_s: float = 1.0, user_field: str = "user_id",
                 item_field: str = "item_id", label_field: str = "rating",
                 rating_range: list[float] | None = None, cache_size: int = 100_000, eta: float | None = None,
                 gamma: float = 0.03, discount: float | None = None, max_batch: int = 4096, name: str | None = None,
                 _path: str = "stages") -> None:
        super().__init__(name)
        base = _path.rsplit(".", 1)[0] if "." in _path else _path
        if policy not in POLICIES:
            raise ConfigError(f"{base}.policy", f"expected one of {', '.join(POLICIES)}, got {policy!r}")
        if not slo_ms > 0:
            raise ConfigError(f"{base}.slo_ms", f"expected a positive number of ms, got {slo_ms!r}")
        rr: tuple[float, float] | None = None
        if rating_range is not None:
            if len(rating_range) != 2 or not float(rating_range[0]) < float(rating_range[1]):
                raise ConfigError(f"{base}.rating_range", f"expected [low, high] with low < high, got {rating_range!r}")
            rr = (float(rating_range[0]), float(rating_range[1]))
        if not isinstance(models, list) or not models:
            raise ConfigError(f"{base}.models", "expected a non-empty list of model containers")
        if int(max_batch) < 1:
            raise ConfigError(f"{base}.max_batch", f"expected at least 1 row, got {max_batch!r}")
        self.containers: list[Container] = [build_container(m, slo_ms, rr, cache_size, f"{base}.models.{j}")
                                            for j, m in enumerate(models)]
        for c in self.containers:
            c.aimd.max_size = int(max_batch)
            c.aimd.size = min(c.aimd.size, c.aimd.max_size)
        names = [c.name for c in self.containers]
        if len(set(names)) != len(names):
            raise ConfigError(f"{base}.models", f"container names must be unique, got {names}")
        self.policy_name = policy
        self.slo_s = float(slo_ms) / 1000.0
        self.rating_range = rr
        self.scale = (rr[1] - rr[0]) ** 2 if rr else 1.0
        self.registry = Registry(registry) if registry else Registry()
        self.refresh_s = float(refresh_s)
        self.fields = (user_field, item_field, label_field)
        self.policy: Exp4 | Exp3 = (
            Exp4(names, eta if eta is not None else 2.0, discount=discount if discount is not None else 0.01)
            if policy == "exp4" else
            Exp3(names, eta if eta is not None else 0.05, gamma, discount=discount if discount is not None else 0.001))
        self._workers: dict[str, Worker] = {}
        self.counters = {"requests": 0, "feedback": 0, "errors": 0, "defaults": 0, "stragglers": 0}
        self.latency = RecentLatencies()
        self.sq_err: dict[str, float] = {n: 0.0 for n in [*names, "served"]}
        self.scored: dict[str, int] = {n: 0 for n in [*names, "served"]}  # feedback each model answered
        self.routed: dict[str, int] = {n: 0 for n in names}

    # -- protocol -------------------------------------------------------------------------------
    def required_columns(self) -> set[str]:
        return set()  # validated row by row: a bad request gets an error reply, not a dead letter

    def numeric_columns(self) -> set[str]:
        return {self.fields[2]}  # the label, on feedback only: learned as float64 whatever the first rows say

    def passes_through(self) -> bool:
        return False

    def produced_columns(self) -> set[str]:
        return set(REPLY_SCHEMA.names)

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        t0 = time.perf_counter()
        self._prepare()
        names = batch.schema.names
        u_f, i_f, l_f = self.fields

        def col(name: str) -> list[Any]:
            return batch.column(name).to_pylist() if name in names else [None] * batch.num_rows

        cids, replies, users, items = col("correlation_id"), col("reply_to"), col(u_f), col(i_f)
        labels, errors = col(l_f), col("request_error")
        out: dict[str, list[Any]] = {f: [] for f in REPLY_SCHEMA.names}

        def reply(j: int | list[int], kind: str, **values: Any) -> None:
            """One reply (``j`` a row), or one per row of ``j`` (a list: ``values`` are then columns)."""
            many = j if isinstance(j, list) else [j]
            cols = values if isinstance(j, list) else {f: [v] for f, v in values.items()}
            blank = [None] * len(many)
            for f in REPLY_SCHEMA.names:
                out[f] += cols.get(f, blank)
            m = len(many)
            out["correlation_id"][-m:] = [cids[r] for r in many]
            out["reply_to"][-m:] = [replies[r] for r in many]
            out["kind"][-m:] = [kind] * m
            out["latency_ms"][-m:] = [(time.perf_counter() - t0) * 1000.0] * m

        feedback: list[int] = []
        kinds: list[str] = []
        rr = self.rating_range
        for j in range(batch.num_rows):
            problem = errors[j] or _bad_ids(users[j], items[j], u_f, i_f)
            label = labels[j]
            if problem is None and label is not None and not _finite(label):
                problem = f"{l_f} must be a finite number, got {label!r}"
            elif problem is None and label is not None and rr is not None and not rr[0] <= label <= rr[1]:
                # a label outside the range would train every learner toward it (1e6 once made the mean 503)
                problem = f"{l_f} {label!r} is outside rating_range [{rr[0]:g}, {rr[1]:g}]: nothing was learned from it"
            if problem is not None:
                self.counters["errors"] += 1
                reply(j, "error", user_id=_int_or_none(users[j]), item_id=_int_or_none(items[j]), error=problem,
                      default=False)
                kinds.append("error")
            elif label is None:
                kinds.append("request")
            else:
                kinds.append("feedback")
                feedback.append(j)
        fixed = self._fixed_predictions(feedback, users, items)
        # Input order, strictly: a request is answered with the state left by the feedback before it and
        # none after it (item vectors, the mean and the weights are shared by all users), so the state does
        # not depend on where micro-batches are cut - a replay after a crash learns the same bits. Replies
        # are too, except an onnxruntime model's, whose batched answer moves in its float32 last bits with
        # the row's place in the batch (the reply fence answers each request once).
        segment: list[int] = []
        for j, kind in enumerate(kinds):
            if kind == "request":
                segment.append(j)
            elif kind == "feedback":
                if segment:
                    self._answer(segment, users, items, cids, t0, reply)
                    segment = []
                pred, model, got = self._feedback(int(users[j]), int(items[j]), float(labels[j]), str(cids[j]),
                                                  {name: vals[j] for name, vals in fixed.items()})
                if replies[j]:
                    reply(j, "feedback", user_id=int(users[j]), item_id=int(items[j]), prediction=pred, model=model,
                          answered=",".join(got), scores=_scores(got), default=False, versions=self._versions())
        if segment:
            self._answer(segment, users, items, cids, t0, reply)
        if not out["kind"]:
            return []
        return [pa.RecordBatch.from_arrays([_column(out[f.name], f.type) for f in REPLY_SCHEMA], schema=REPLY_SCHEMA)]

    def _fixed_predictions(self, rows: list[int], users: list[Any], items: list[Any]) -> dict[str, dict[int, float]]:
        """Predictions of the models feedback does not change, for every feedback row, one call each
        (:meth:`~.containers.Container.predict_rows`: the losses learned from do not depend on the batch)."""
        if not rows:
            return {}
        u = np.asarray([users[j] for j in rows], dtype=np.int64)
        i = np.asarray([items[j] for j in rows], dtype=np.int64)
        out: dict[str, dict[int, float]] = {}
        for c in self.containers:
            if c.learns:
                continue
            try:
                vals = c.predict_rows(u, i)
            except Exception:  # noqa: BLE001 - this model gives no answer to score
                continue
            out[c.name] = dict(zip(rows, vals.tolist(), strict=True))
        return out

    # -- requests -------------------------------------------------------------------------------
    def _prepare(self) -> None:
        if self.store is None:
            self.store = {}  # outside a runner (tests, `dawnstream process`): kept in the snapshot blob
        for c in self.containers:
            c.store = self.store
            c.refresh(self.registry, self.refresh_s)

    def _answer(self, rows: list[int], users: list[Any], items: list[Any], cids: list[Any], t0: float,
                reply: Callable[..., None]) -> None:
        u = np.asarray([users[j] for j in rows], dtype=np.int64)
        i = np.asarray([items[j] for j in rows], dtype=np.int64)
        preds = answer_within(self.containers, lambda c: _chunked(c, u, i, t0 + self.slo_s), len(rows),
                              t0 + self.slo_s, self._workers, self.counters)
        self._reply_segment(rows, u, i, cids, preds, reply)
        self.latency.add((time.perf_counter() - t0) * 1000.0, len(rows))

    def _reply_segment(self, rows: list[int], u: np.ndarray, i: np.ndarray, cids: list[Any],
                       preds: dict[str, np.ndarray], reply: Callable[..., None]) -> None:
        """Replies to one segment from the models' answers (``preds``: arm -> ``(n,)`` float64, NaN where a
        row got none): Exp4's weighted mean of the models that answered (Exp3: the drawn model, or the most
        trusted that answered), clipped, else the flagged default. Plain Python on lists, handed over a
        column at a time: numpy's per-call cost would outweigh a segment of one, and a call per row and
        field would outweigh the models."""
        arms = self.policy.arms
        w = self.policy.weight_list()
        cols = [preds[a].tolist() if a in preds else None for a in arms]
        nan = math.nan
        full, fmt = ",".join(arms), ",".join(f"{a}={{:.4f}}" for a in arms)
        policy = self.policy
        fallback: float | None = None
        vals: list[float] = []
        models: list[str] = []
        names: list[str] = []
        scores: list[str | None] = []
        defaults: list[bool] = []
        for k, j in enumerate(rows):
            row = [nan if c is None else c[k] for c in cols]
            live = [a for a, v in enumerate(row) if math.isfinite(v)]
            defaults.append(not live)
            if not live:
                fallback = self._default() if fallback is None else fallback
                vals.append(fallback)
                models.append("default")
                names.append("")
                scores.append(None)
                continue
            if isinstance(policy, Exp4):  # Exp4.combine(), inlined
                num = den = 0.0
                for a in live:
                    num += w[a] * row[a]
                    den += w[a]
                value, model = (num / den if den > 0 else sum(row[a] for a in live) / len(live)), "exp4"
            else:
                model, _ = policy.choose(str(cids[j]))
                a = arms.index(model)
                if a not in live:  # the drawn model straggled: the most trusted one that answered
                    a = max(live, key=w.__getitem__)
                    model = arms[a]
                value = row[a]
                self.routed[model] += 1
            vals.append(self._clip(value))
            models.append(model)
            if len(live) == len(arms):
                names.append(full)
                scores.append(fmt.format(*row))
            else:
                names.append(",".join(arms[a] for a in live))
                scores.append(_scores({arms[a]: row[a] for a in live}))
        self.counters["requests"] += len(rows)
        self.counters["defaults"] += sum(defaults)
        reply(rows, "prediction", user_id=u.tolist(), item_id=i.tolist(), prediction=vals, model=models,
              answered=names, scores=scores, default=defaults, versions=[self._versions()] * len(rows))

    # -- feedback ---------------------------------------------------------------------------------
    def _feedback(self, user: int, item: int, label: float, event_id: str,
                  fixed: dict[str, float]) -> tuple[float, str, dict[str, float]]:
        """Score every model on ``(user, item)`` before learning ``label`` (``fixed``: the answers of the
        models that do not learn, computed for the whole batch); update the policy; learn."""
        got: dict[str, float] = {}
        for c in self.containers:
            if not c.learns:
                v = fixed.get(c.name, math.nan)
            else:
                try:
                    v = c.predict_one(user, item)
                except Exception:  # noqa: BLE001 - no answer from this model for this feedback
                    continue
            if math.isfinite(v):
                got[c.name] = v
        self.counters["feedback"] += 1
        served, model = math.nan, "default"
        if got:
            if isinstance(self.policy, Exp4):
                served, model = self.policy.combine(got), "exp4"
                self.policy.update(got, label, self.scale)
            else:
                model, p = self.policy.choose(event_id)
                if model in got:
                    served = got[model]
                    self.policy.update(model, served, label, p, self.scale)
            for name, v in got.items():
                self.sq_err[name] += (self._clip(v) - label) ** 2
                self.scored[name] += 1
        served = self._clip(served if math.isfinite(served) else self._default())
        self.sq_err["served"] += (served - label) ** 2
        self.scored["served"] += 1
        for c in self.containers:
            if c.learns:
                c.learn(user, item, label)
        return served, model, got

    # -- helpers ----------------------------------------------------------------------------------
    def _versions(self) -> str:
        return ",".join(f"{c.name}:{c.version}" for c in self.containers)

    def _default(self) -> float:
        for c in self.containers:
            if c.kind == "mean":
                return self._clip(c.predict_one(0, 0))
        return self._clip(sum(self.rating_range) / 2 if self.rating_range else 0.0)

    def _clip(self, v: float) -> float:
        rr = self.rating_range
        if rr is None:
            return float(v)
        return rr[0] if v < rr[0] else rr[1] if v > rr[1] else float(v)

    def status(self) -> dict[str, Any]:
        """Live numbers for displays: counters, RMSE per model and served (on feedback), AIMD batch
        sizes, versions, cache hit rates and the policy's weights."""
        return {
            "counters": dict(self.counters),
            "rmse": {k: math.sqrt(v / self.scored[k]) if self.scored[k] else math.nan for k, v in self.sq_err.items()},
            "scored": dict(self.scored),
            "batch": {c.name: c.aimd.size for c in self.containers},
            "versions": {c.name: c.version for c in self.containers},
            "weights": dict(zip(self.policy.arms, self.policy.weights().round(4).tolist(), strict=True)),
            "routed": dict(self.routed),
            "cache_hits": {c.name: getattr(c, "hits", 0) for c in self.containers},
            "slo_ms": self.slo_s * 1000.0, **self.latency.percentiles(),
        }

    def preflight(self) -> None:
        """Every registry model must have a promoted version that loads, or none promoted yet.

        Raises:
            ModelError: a model's promoted versions all fail to load (each reason named).
        """
        for c in self.containers:
            if isinstance(c, RegisteredContainer):
                c.preflight(self.registry)

    def gauges(self) -> dict[str, float]:
        """``/metrics`` series: the counters, and per model ``rmse.``, ``scored.``, ``weight.``, ``batch.``
        (AIMD rows), ``version.``, ``cache_hits.``, ``routed.`` (Exp3); ``rmse.served`` for the answers given."""
        st = self.status()
        out: dict[str, float] = {k: float(v) for k, v in st["counters"].items()}
        for key in ("rmse", "scored", "weights", "batch", "versions", "cache_hits", "routed"):
            name = {"weights": "weight", "versions": "version"}.get(key, key)
            for model, v in st[key].items():
                out[f"{name}.{model}"] = float(v)
        out["slo_ms"] = st["slo_ms"]
        out.update(self.latency.percentiles())
        return out

    def panel(self) -> dict[str, object]:
        """:meth:`status`: the numbers a serving dashboard shows (counters, per-model RMSE, AIMD batch sizes,
        versions, the policy's weights, p50/p99 against ``slo_ms``)."""
        registry = {m.name: m.model for m in self.containers if isinstance(getattr(m, "model", None), str)}  # type: ignore[attr-defined]
        return {"kind": "serving", **self.status(), "registry_models": registry}

    def snapshot(self) -> bytes:
        if self.store is None:
            self.store = {}
        for c in self.containers:
            c.store = self.store
            c.flush_users()
        return super().snapshot()

    def _state(self) -> Any:
        state = {"policy": self.policy.state(), "containers": {c.name: c.state() for c in self.containers},
                 "counters": self.counters, "sq_err": {k: float(v) for k, v in self.sq_err.items()},
                 "scored": self.scored, "routed": self.routed}
        if isinstance(self.store, dict):  # no keyed store from a runner: the records travel in the blob
            state["store"] = {k: base64.b64encode(v).decode() for k, v in self.store.items()}
        return state

    def _load_state(self, state: Any) -> None:
        if not state:
            return
        self.policy.load(state.get("policy", {}))
        for c in self.containers:
            c.load(state.get("containers", {}).get(c.name, {}))
        self.counters.update(state.get("counters", {}))
        self.sq_err.update(state.get("sq_err", {}))
        if "store" in state and (self.store is None or isinstance(self.store, dict)):
            self.store = {k: base64.b64decode(v) for k, v in state["store"].items()}
        self.scored.update(state.get("scored", {}))
        self.routed.update(state.get("routed", {}))


def _chunked(c: Container, users: np.ndarray, items: np.ndarray, deadline: float) -> np.ndarray:
    """``c``'s predictions in chunks of its AIMD size; rows not reached by ``deadline`` stay NaN (for
    models on their own thread: an inline model's few µs per row are cheaper than a default answer)."""
    out = np.full(len(users), np.nan)
    start = 0
    while start < len(users):
        if start and not c.inline and time.perf_counter() >= deadline:
            break
        end = min(len(users), start + c.aimd.size)
        t0 = time.perf_counter()
        out[start:end] = c.predict(users[start:end], items[start:end])
        c.observe(end - start, (time.perf_counter() - t0) * 1000.0)
        start = end
    return out


def _column(values: list[Any], dtype: pa.DataType) -> pa.Array:
    """``values`` as an Arrow array of ``dtype``. pyarrow converts a list of ``str`` three times faster when
    it infers the type than when it is given ``pa.string()`` (10 vs 3.4 µs for nine values, pyarrow 26),
    and a reply batch has eight string columns, most of them null or all strings."""
    if all(v is None for v in values):
        return pa.nulls(len(values), dtype)
    if dtype == pa.string():
        arr = pa.array(values)
        if arr.type == dtype:
            return arr
    return pa.array(values, dtype)


def _scores(got: dict[str, float]) -> str:
    return ",".join(f"{k}={v:.4f}" for k, v in got.items())


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


def _bad_ids(user: Any, item: Any, u_f: str, i_f: str) -> str | None:
    for name, v in ((u_f, user), (i_f, item)):
        if v is None:
            return f"missing {name}"
        if not isinstance(v, int) or isinstance(v, bool):
            return f"{name} must be an integer id, got {v!r}"
    return None
