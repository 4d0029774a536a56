"""Models behind a ``predict`` stage: any registered model, on the request's declared feature columns.

Clipper's point (Crankshaw et al., NSDI'17, section 4.4) is that *any* model sits behind one prediction
interface. Each model here answers ``answer(columns, n)``: the request's feature columns (arrays built
from the declared schema, :mod:`.features`) in, ``(n, k)`` float64 out - a number per row for a
regression (``k = 1``), class probabilities for a classification. Kinds:

- ``onnx``: any ONNX graph in the registry (exported from scikit-learn by skl2onnx, from torch, from
  LightGBM/XGBoost by onnxmltools), run by onnxruntime. ``inputs`` maps each graph input to one column,
  or to a list of numeric columns packed into one float tensor; ``output`` names the graph output to
  read (default: for a regression the first output, for a classification the first float output with one
  column per class - skl2onnx's ``probabilities``; export with ``options={"zipmap": False}``). Each
  version is checked when it loads: the graph's input names, element types and shapes against what the
  stage will feed it, with an error listing both signatures. Answers are cached per (version, feature
  values).
- ``text_model``: the noise-aware end model the labeling pipeline registers
  (:class:`~dawnstream.models.text_model.HashedTextModel`) on one text column. Its answers are row by row
  (a sparse product), the same bits in any batch.
- ``prior``: the running mean of the labels (regression) or the Laplace-smoothed class frequencies: the
  baseline every model must beat, and the default answer.
- ``online``: Velox's per-key online layer (:class:`~dawnstream.operators.learning.key_layer.KeyLayer`)
  over another model's answer (``over``), keyed by a request column (``key``; none: one global layer);
  ``features`` names an output of that model's ONNX graph (an embedding, ``(n, d)``) the layer also
  learns on - θ's item vectors for a matrix factorisation, as in Velox.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from cachetools import LRUCache

from dawnstream.errors import ConfigError
from dawnstream.models.artifacts import onnx_session
from dawnstream.models.registry import ModelError
from dawnstream.operators.learning.key_layer import KeyLayer
from dawnstream.operators.serving.containers import RegistryVersions, Slot
from dawnstream.operators.serving.features import FeatureSchema, FeatureType
from dawnstream.operators.serving.tasks import Task

FEATURE_KINDS = ("onnx", "text_model", "prior", "online")
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(string)": object}

Columns = dict[str, np.ndarray]
"""A request segment's feature columns (:func:`~.features.column_array`), each ``(n,)`` or ``(n, N)``."""


class FeatureModel(Slot, ABC):
    """A model answering on feature columns (see the module docstring).

    Args:
        name: the arm's name.
        slo_ms: the SLO its AIMD batch size is tuned to.
        task: the stage's task (the width and meaning of an answer).
    """

    def __init__(self, name: str, slo_ms: float, task: Task) -> None:
        super().__init__(name, slo_ms)
        self.task = task

    @property
    def width(self) -> int:
        """Values per answered row: the task's ``k``, then the embedding an online layer asked for (if any)."""
        return self.task.k

    @abstractmethod
    def answer(self, cols: Columns, n: int) -> np.ndarray:
        """``(n, width)`` float64 answers for ``n`` rows of ``cols`` (the first ``k`` columns: the answer).

        Raises:
            ModelError: no version loaded yet, or the model failed (the stage treats it as a straggler).
        """

    def learn(self, key: str | None, answers: dict[str, list[float]], y: float) -> None:
        """One feedback row: ``answers`` are every arm's answer when the request was served."""
        return None


class OnnxFeatureModel(RegistryVersions, FeatureModel):
    """An ONNX graph from the registry on the declared feature columns (see the module docstring).

    Args:
        inputs: ``{graph input: column or [columns]}``; default: one graph input per feature column of the
            same name.
        output: the graph output to read (default: chosen by the task).
        cache_size: LRU entries ((version, feature values) -> answer).
        exact: one onnxruntime call per row. onnxruntime's kernels sum a row's terms in an order that can
            depend on the row's place in the batch (a matrix factorisation's ReduceSum: 57 of 2,000 answers
            moved in their float32 last bits between batches of 333 and 2,000), so batched answers - and the
            learning that follows what was served - can differ in their last bits when a replay after a crash
            cuts the stream elsewhere. ``exact`` gives the same bits however batches are cut, at the cost of
            batching (AIMD then sizes the chunks the SLO is checked between).

    Raises:
        ConfigError: an input maps to an undeclared column, or packs a text column.
    """

    kind = "onnx"

    def __init__(self, name: str, slo_ms: float, task: Task, model: str, schema: FeatureSchema,
                 inputs: dict[str, Any] | None = None, output: str | None = None, cache_size: int = 100_000,
                 path: str = "models", exact: bool = False) -> None:
        RegistryVersions.__init__(self, name, slo_ms, model)
        self.exact = bool(exact)
        self.task = task
        self.schema = schema
        self.inputs: dict[str, list[str]] = {}
        spec = inputs if inputs is not None else {c: c for c in schema.names}
        if not isinstance(spec, dict) or not spec:
            raise ConfigError(f"{path}.inputs", "expected {graph input: column or [columns]}")
        for graph_input, cols in spec.items():
            many = cols if isinstance(cols, list) else [cols]
            for c in many:
                if c not in schema.types:
                    raise ConfigError(f"{path}.inputs.{graph_input}",
                                      f"column {c!r} is not a declared feature ({schema.signature()})")
            if isinstance(cols, list) and not all(schema.types[c].numeric for c in many):
                raise ConfigError(f"{path}.inputs.{graph_input}", "only numeric columns can be packed into one tensor")
            self.inputs[str(graph_input)] = [str(c) for c in many]
        self.packed = {g for g, v in spec.items() if isinstance(v, list)}
        self.output = output
        self.embedding: str | None = None  # an output an online layer over this model reads (set by the stage)
        self.embedding_width = 0
        self.session: Any = None
        self._feeds: dict[str, tuple[Any, int]] = {}  # graph input -> (numpy dtype, rank)
        self._out_index: tuple[int, ...] = (0,)
        self.cache: LRUCache[tuple[Any, ...], tuple[float, ...]] = LRUCache(maxsize=max(cache_size, 1))
        self.hits = 0
        self.misses = 0

    # -- loading ------------------------------------------------------------------------------------
    def _ours(self) -> str:
        parts = []
        for g, cols in self.inputs.items():
            types = [self.schema.types[c] for c in cols]
            if g in self.packed:
                parts.append(f"{g} <- {cols}: float[n, {sum(t.width for t in types)}]")
            else:
                parts.append(f"{g} <- {cols[0]}: {types[0].spec}")
        return "; ".join(parts)

    def _load(self, artifact: bytes, version: int) -> Any:
        session = onnx_session(artifact)
        theirs = "; ".join(f"{i.name}: {i.type}{list(i.shape)}" for i in session.get_inputs())
        outs = "; ".join(f"{o.name}: {o.type}{list(o.shape)}" for o in session.get_outputs())
        where = f"model {self.model!r} v{version}"

        def refuse(why: str) -> ModelError:
            return ModelError(f"{where} {why}. The graph takes ({theirs}) and returns ({outs}); the stage feeds it "
                              f"({self._ours()}). Map the inputs with the container's `inputs:` key, or re-export "
                              "the model for these columns")

        graph = {i.name: i for i in session.get_inputs()}
        missing = [g for g in graph if g not in self.inputs]
        extra = [g for g in self.inputs if g not in graph]
        if missing or extra:
            raise refuse(f"has inputs {sorted(graph)}, but the stage maps {sorted(self.inputs)}")
        feeds: dict[str, tuple[Any, int]] = {}
        for g, info in graph.items():
            dtype = _ORT_TYPES.get(info.type)
            types = [self.schema.types[c] for c in self.inputs[g]]
            width = sum(t.width for t in types)
            text = any(not t.numeric for t in types)
            if dtype is None or (text and dtype is not object) or (not text and dtype is object):
                raise refuse(f"input {g!r} is {info.type}, which columns {self.inputs[g]} cannot be fed as")
            if dtype in (np.int64, np.int32) and any(t.kind != "int64" for t in types):
                raise refuse(f"input {g!r} takes integers, but {self.inputs[g]} are not int64 columns")
            shape = list(info.shape)
            if len(shape) not in (1, 2):
                raise refuse(f"input {g!r} has rank {len(shape)}; a row of the stage is rank 1 or 2")
            if len(shape) == 2 and isinstance(shape[1], int) and shape[1] != width:
                raise refuse(f"input {g!r} takes {shape[1]} values per row, the columns give {width}")
            if len(shape) == 1 and width != 1:
                raise refuse(f"input {g!r} takes one value per row, the columns give {width}")
            feeds[g] = (dtype, len(shape))
        self._feeds = feeds
        out_index: tuple[int, ...] = (self._pick_output(session, refuse),)
        if self.embedding is not None:
            names = [o.name for o in session.get_outputs()]
            if self.embedding not in names:
                raise refuse(f"has no output {self.embedding!r} for the online layer's features")
            out_index = (*out_index, names.index(self.embedding))
        one = {c: _zero_column(self.schema.types[c]) for g in self.inputs for c in self.inputs[g]}
        try:  # warm up (the first run allocates) and check what one row gives
            got = self._run(session, out_index, one, 1, check=True)
        except ModelError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime's own error types
            raise refuse(f"fails on one row of zeros ({type(e).__name__}: {str(e)[:200]})") from None
        if got.shape[0] != 1 or got.shape[1] < self.task.k or not np.isfinite(got).all() \
                or (self.embedding is None and got.shape[1] != self.task.k):
            raise refuse(f"answered one row with {np.asarray(got).tolist()!r:.80}: expected {self.task.k} finite "
                         f"number(s) per row for a {self.task.kind} task")
        return session, out_index, feeds, got.shape[1] - self.task.k

    def _pick_output(self, session: Any, refuse: Any) -> int:
        outputs = session.get_outputs()
        names = [o.name for o in outputs]
        if self.output is not None:
            if self.output not in names:
                raise refuse(f"has no output {self.output!r}")
            j = names.index(self.output)
            if not outputs[j].type.startswith("tensor("):
                raise refuse(f"output {self.output!r} is {outputs[j].type}, not a tensor (skl2onnx: export with "
                             "options={'zipmap': False})")
            return j
        floats = [j for j, o in enumerate(outputs) if o.type in ("tensor(float)", "tensor(double)")]
        if self.task.kind != "regression":
            for j in floats:
                shape = outputs[j].shape
                if len(shape) == 2 and shape[1] in (self.task.k, None) or \
                        (self.task.kind == "binary" and len(shape) == 2 and shape[1] == 1):
                    return j
            raise refuse(f"has no float output of {self.task.k} class probabilities per row (a ZipMap output "
                         "is not read: skl2onnx: export with options={'zipmap': False}; or name one with `output:`)")
        if not floats:
            raise refuse("has no float output to read a number from")
        return floats[0]

    def _install(self, model: Any, version: int) -> None:
        session, out_index, feeds, extra = model
        self._feeds, self._out_index, self.embedding_width = feeds, out_index, extra
        self.session, self.version = session, version

    @property
    def width(self) -> int:
        return self.task.k + self.embedding_width

    # -- answering ----------------------------------------------------------------------------------
    def _tensor(self, g: str, cols: Columns, n: int) -> np.ndarray:
        dtype, rank = self._feeds[g]
        parts = [cols[c].reshape(n, -1) for c in self.inputs[g]]
        x = parts[0] if len(parts) == 1 else np.concatenate([p.astype(np.float64) for p in parts], axis=1)
        x = x.astype(dtype)
        return x.reshape(n) if rank == 1 else x

    def _run(self, session: Any, out_index: tuple[int, ...], cols: Columns, n: int, check: bool = False) -> np.ndarray:
        feed = {g: self._tensor(g, cols, n) for g in self.inputs}
        outs = session.run(None, feed)
        got = np.asarray(outs[out_index[0]], dtype=np.float64).reshape(n, -1)
        if self.task.kind == "binary" and got.shape[1] == 1:
            got = np.concatenate([1.0 - got, got], axis=1)  # a sigmoid output: P(positive class)
        if len(out_index) > 1:
            got = np.concatenate([got, np.asarray(outs[out_index[1]], dtype=np.float64).reshape(n, -1)], axis=1)
        if not check and got.shape[1] != self.width:
            raise ModelError(f"model {self.model!r} v{self.version} answered {got.shape[1]} values per row, "
                             f"expected {self.width}")
        return got

    def answer(self, cols: Columns, n: int) -> np.ndarray:
        session, version = self.session, self.version
        if session is None:
            raise ModelError(f"no promoted version of {self.model!r} in the registry yet")
        used = [c for g in self.inputs for c in self.inputs[g]]
        keys = list(zip(*[_hashable(cols[c]) for c in used], strict=True))
        out = np.empty((n, self.width))
        miss: list[int] = []
        cache = self.cache
        for j, key in enumerate(keys):
            v = cache.get((version, *key))
            if v is None:
                miss.append(j)
            else:
                out[j] = v
        self.hits += n - len(miss)
        self.misses += len(miss)
        if miss:
            idx = np.asarray(miss)
            sub = {c: cols[c][idx] for c in used}
            got = self.answer_rows(sub, len(miss)) if self.exact else \
                self._run(session, self._out_index, sub, len(miss))
            out[idx] = got
            for j, row in zip(miss, got.tolist(), strict=True):
                cache[(version, *keys[j])] = tuple(row)
        return out

    def answer_rows(self, cols: Columns, n: int) -> np.ndarray:
        """One onnxruntime call per row (``exact``): the same bits however the rows are batched."""
        session = self.session
        if session is None:
            raise ModelError(f"no promoted version of {self.model!r} in the registry yet")
        return np.vstack([self._run(session, self._out_index, {c: v[j:j + 1] for c, v in cols.items()}, 1)
                          for j in range(n)]) if n else np.empty((0, self.width))


class TextFeatureModel(RegistryVersions, FeatureModel):
    """The labeling pipeline's end model (:class:`~dawnstream.models.text_model.HashedTextModel`, an npz
    artifact) on one text column (``text``)."""

    kind = "text_model"

    def __init__(self, name: str, slo_ms: float, task: Task, model: str, schema: FeatureSchema, text: str = "text",
                 path: str = "models") -> None:
        RegistryVersions.__init__(self, name, slo_ms, model)
        self.task = task
        if text not in schema.types or schema.types[text].kind not in ("string", "category"):
            raise ConfigError(f"{path}.text", f"expected a declared string column, got {text!r} "
                                              f"({schema.signature()})")
        if task.kind == "regression":
            raise ConfigError(f"{path}.kind", "a text_model answers class probabilities: use a classification task")
        self.text = text
        self.model_obj: Any = None

    def _load(self, artifact: bytes, version: int) -> Any:
        from dawnstream.models.text_model import HashedTextModel

        try:
            m = HashedTextModel.from_npz(artifact)
        except Exception as e:  # noqa: BLE001 - any malformed artifact
            raise ModelError(f"model {self.model!r} v{version} is not a text model npz: {e}") from None
        if m.k != self.task.k:
            raise ModelError(f"model {self.model!r} v{version} has {m.k} classes; the stage's task has "
                             f"{self.task.k} ({', '.join(self.task.classes)})")
        m.predict_proba([""])  # warm up: the vectorizer's first call imports scikit-learn
        return m

    def _install(self, model: Any, version: int) -> None:
        self.model_obj, self.version = model, version

    def answer(self, cols: Columns, n: int) -> np.ndarray:
        m = self.model_obj
        if m is None:
            raise ModelError(f"no promoted version of {self.model!r} in the registry yet")
        return np.asarray(m.predict_proba([str(t) for t in cols[self.text].tolist()]), dtype=np.float64)


class PriorModel(FeatureModel):
    """The label prior: the running mean (regression) or the class frequencies with one pseudo-count per
    class (classification). Learns from every piece of feedback; answers the same for every row."""

    kind = "prior"
    inline = True
    learns = True

    def __init__(self, name: str, slo_ms: float, task: Task) -> None:
        super().__init__(name, slo_ms, task)
        self.count = 0
        self.sums = [0.0] * task.k

    def value(self) -> list[float]:
        """The current answer: ``[mean]`` (the label range's middle, or 0, before any feedback) or class
        probabilities."""
        t = self.task
        if t.kind == "regression":
            if self.count:
                return [self.sums[0] / self.count]
            return [sum(t.range) / 2 if t.range else 0.0]
        return [(s + 1.0) / (self.count + t.k) for s in self.sums]

    def answer(self, cols: Columns, n: int) -> np.ndarray:
        return np.tile(np.asarray(self.value(), dtype=np.float64), (n, 1))

    def learn(self, key: str | None, answers: dict[str, list[float]], y: float) -> None:
        self.count += 1
        if self.task.kind == "regression":
            self.sums[0] += y
        else:
            self.sums[int(y)] += 1.0

    def state(self) -> dict[str, Any]:
        return {**super().state(), "count": self.count, "sums": self.sums}

    def load(self, state: dict[str, Any]) -> None:
        super().load(state)
        self.count = int(state.get("count", 0))
        self.sums = [float(v) for v in state.get("sums", self.sums)]


AUTO_LAMBDAS = (64.0, 16.0, 4.0, 1.0)
"""The shrinkage strengths ``lam: auto`` learns in parallel (strongest first: a tie keeps the key closest to
the population)."""
LOSS_DISCOUNT = 1e-3
"""Per piece of feedback, the running losses ``lam: auto`` compares forget this share: the choice follows
the last few thousand pieces of feedback. Without it, MovieLens' first 80% - the ratings θ was fitted on,
where trusting θ looks best - kept λ at 64 (last-20% RMSE 0.9565) where 16 does 0.9487; with it, 0.9486."""


class OnlineLayerModel(FeatureModel):
    """Velox's per-key online layer over the answer of model ``over`` (see
    :mod:`~dawnstream.operators.learning.key_layer`); per-key weights live in the stage's keyed store
    (``<name>/<λ>/<key>``), the population's in the snapshot.

    How far a key may move from the population on little feedback (λ) depends on the data: reviews of one
    movie share a verdict, flights of one carrier barely differ from the model's view. With ``lam: auto``
    (the default) the layer learns with each λ of :data:`AUTO_LAMBDAS` side by side, scores each on every piece
    of feedback before learning it (progressive validation, the task's loss, discounted by
    :data:`LOSS_DISCOUNT`) and answers with the λ whose running loss is lowest - a choice made by the stream,
    the same on a replay. A number fixes λ.
    """

    kind = "online"
    inline = True
    learns = True

    def __init__(self, name: str, slo_ms: float, task: Task, over: str, key: str | None, schema: FeatureSchema,
                 lam: float | str = "auto", features: str | None = None, path: str = "models") -> None:
        super().__init__(name, slo_ms, task)
        if features is not None and task.kind == "multiclass":
            raise ConfigError(f"{path}.features", "a multi-class online layer learns per-class biases: remove features")
        if key is not None and key not in schema.types:
            raise ConfigError(f"{path}.key", f"expected a declared feature column, got {key!r} ({schema.signature()})")
        if key is not None and schema.types[key].kind == "vector":
            raise ConfigError(f"{path}.key", "a vector column cannot key weights")
        if lam == "auto":
            lams = list(AUTO_LAMBDAS)
        elif isinstance(lam, (int, float)) and not isinstance(lam, bool) and lam > 0:
            lams = [float(lam)]
        else:
            raise ConfigError(f"{path}.lam", f"expected auto or a positive number, got {lam!r}")
        self.over, self.key, self.features = over, key, features
        self.lams = lams
        self.layers = [KeyLayer(task.kind, task.k, lam=v, prefix=f"{name}/{v:g}/") for v in lams]
        self.losses = [0.0] * len(lams)
        self.base: np.ndarray | None = None  # the base model's answers for the segment being answered

    @property
    def layer(self) -> KeyLayer:
        """The layer answering now: the λ with the lowest running loss."""
        return self.layers[min(range(len(self.layers)), key=self.losses.__getitem__)]

    def keys(self, cols: Columns, n: int) -> list[str | None]:
        """Each row's key (None without a key column)."""
        if self.key is None:
            return [None] * n
        return [str(v) for v in cols[self.key].tolist()]

    def answer(self, cols: Columns, n: int) -> np.ndarray:
        if self.base is None:
            raise ModelError(f"{self.name}: no answer from {self.over!r} to build on")
        k = self.task.k
        for lay in self.layers:
            lay.store = self.store
            lay.resize(self.base.shape[1] - k)
        layer = self.layer
        out = np.full((n, k), np.nan)
        for j, key in enumerate(self.keys(cols, n)):
            row = self.base[j].tolist()
            if all(math.isfinite(v) for v in row):
                out[j] = layer.predict(key, row[0] if self.task.kind == "regression" else row[:k], row[k:])
        return out

    def learn(self, key: str | None, answers: dict[str, list[float]], y: float) -> None:
        base = answers.get(self.over)
        if base is None or not all(math.isfinite(v) for v in base):
            return  # the base model gave no answer to this request: nothing to learn the layer on
        k = self.task.k
        if len(base) - k != self.layers[0].extra:
            return  # served by a model version whose embedding had another width: not comparable
        answer, emb = (base[0] if self.task.kind == "regression" else base[:k]), base[k:]
        for j, lay in enumerate(self.layers):
            lay.store = self.store
            if len(self.layers) > 1:
                loss = self.task.loss(self.task.clip(lay.predict(key, answer, emb)), y)
                self.losses[j] = self.losses[j] * (1.0 - LOSS_DISCOUNT) + loss
            lay.learn(key, answer, y, emb)

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the update kernels on a throwaway layer: done at the first
        feedback instead, it stalled the requests behind it for ~200 ms."""
        scratch = KeyLayer(self.task.kind, self.task.k)
        base: float | list[float] = 3.0 if self.task.kind == "regression" else [1.0 / self.task.k] * self.task.k
        scratch.learn("k", base, 0.0)
        scratch.predict("k", base)

    def chosen_lam(self) -> float:
        """The λ answering now."""
        return self.lams[self.layers.index(self.layer)]

    def flush_users(self) -> None:
        for lay in self.layers:
            lay.store = self.store
            lay.flush()

    def state(self) -> dict[str, Any]:
        return {**super().state(), "extra": self.layers[0].extra, "losses": self.losses,
                "population": [lay.population.to_bytes().hex() for lay in self.layers]}

    def load(self, state: dict[str, Any]) -> None:
        from dawnstream.operators.learning.key_layer import KeyState

        super().load(state)
        pops = state.get("population", [])
        for j, lay in enumerate(self.layers):
            lay.resize(int(state.get("extra", 0)))
            if j < len(pops):
                lay.population = KeyState.from_bytes(bytes.fromhex(pops[j]), lay.d)
            lay.forget_memory()
        self.losses = [float(v) for v in state.get("losses", self.losses)]


def build_feature_model(spec: dict[str, Any], task: Task, schema: FeatureSchema, slo_ms: float, cache_size: int,
                        path: str) -> FeatureModel:
    """One model from its topology entry (``{name, kind, model, inputs, output, text, over, key, lam}``).

    Raises:
        ConfigError: unknown kind or key, a missing ``model`` or ``over`` (with the key path).
    """
    if not isinstance(spec, dict):
        raise ConfigError(path, "expected a mapping like {name: fraud, kind: onnx, model: fraud-score}")
    allowed = {"name", "kind", "model", "inputs", "output", "text", "over", "key", "lam", "features", "exact"}
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError(f"{path}.{sorted(unknown)[0]}", f"unknown key; expected {', '.join(sorted(allowed))}")
    kind = spec.get("kind")
    if kind not in FEATURE_KINDS:
        raise ConfigError(f"{path}.kind", f"expected one of {', '.join(FEATURE_KINDS)}, got {kind!r}")
    name = str(spec.get("name") or kind)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ConfigError(f"{path}.name", f"expected letters, digits, '_', '.', '-', got {name!r}")
    if kind == "prior":
        return PriorModel(name, slo_ms, task)
    if kind == "online":
        over = spec.get("over")
        if not isinstance(over, str) or not over:
            raise ConfigError(f"{path}.over", "an online layer needs the name of the model it learns over")
        features = spec.get("features")
        if features is not None and (not isinstance(features, str) or not features):
            raise ConfigError(f"{path}.features", "expected the name of an output of the model it learns over")
        return OnlineLayerModel(name, slo_ms, task, over, spec.get("key"), schema, spec.get("lam", "auto"),
                                features, path)
    model = spec.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{path}.model", f"a {kind} model needs the registry model name to serve")
    if kind == "text_model":
        return TextFeatureModel(name, slo_ms, task, model, schema, str(spec.get("text", "text")), path)
    inputs = spec.get("inputs")
    if inputs is not None and not isinstance(inputs, dict):
        raise ConfigError(f"{path}.inputs", "expected {graph input: column or [columns]}")
    output = spec.get("output")
    exact = spec.get("exact", False)
    if not isinstance(exact, bool):
        raise ConfigError(f"{path}.exact", f"expected true or false, got {exact!r}")
    return OnnxFeatureModel(name, slo_ms, task, model, schema, inputs, str(output) if output else None,
                            cache_size, path, exact)


def _zero_column(t: FeatureType) -> np.ndarray:
    if t.kind == "vector":
        return np.zeros((1, t.width), np.float32)
    if t.kind in ("string", "category"):
        return np.asarray([""], dtype=object)
    return np.zeros(1, np.int64 if t.kind == "int64" else np.float64)


def _hashable(col: np.ndarray) -> list[Any]:
    if col.ndim == 2:
        return [tuple(r) for r in col.tolist()]
    return col.tolist()
