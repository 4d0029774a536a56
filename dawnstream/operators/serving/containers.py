"""Model containers: one interface over the models a ``serve`` stage can answer with.

Clipper's model containers (Crankshaw et al., NSDI'17, section 4.4) hide each framework behind
``predict(batch)``; here a container also says whether it learns from feedback (``learn``), whether
its answers may be cached (a fixed model version: same input, same answer) and whether it runs in the
stage's thread (``inline``: models whose state feedback changes) or on a worker thread that the SLO
may leave behind (a straggler). Kinds:

- ``velox``: the hybrid model (:class:`~dawnstream.operators.learning.velox.VeloxModel`); θ is the
  promoted version of a registry model (npz of a :class:`~dawnstream.models.mf.BiasedMF`).
- ``onnx``: any ONNX graph in the registry taking ``user_id`` and ``item_id`` (int64 ``[n]``) and
  returning one float per row, run by onnxruntime (one intra-op thread per container).
- ``online_mf``: a biased MF learned fully online by SGD
  (:class:`~dawnstream.operators.learning.online_mf.OnlineBiasedMF`); its user and item vectors live in
  the keyed store. Item vectors are learned from the partition's own feedback.
- ``mean``: the running mean of the feedback labels (the baseline every model must beat).

Every container polls the registry for a newly promoted version between batches (``refresh``) and
swaps to it without a pause: the new version is loaded before the old one is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import MutableMapping
from typing import Any

import numpy as np
from cachetools import LRUCache

from dawnstream.logs import event, get_logger
from dawnstream.models.artifacts import onnx_session
from dawnstream.models.mf import BiasedMF
from dawnstream.models.registry import ModelError, Registry
from dawnstream.operators.learning.online_mf import OnlineBiasedMF
from dawnstream.operators.learning.velox import VeloxModel
from dawnstream.operators.serving.aimd import AIMDBatcher

log = get_logger(__name__)
KINDS = ("velox", "onnx", "online_mf", "mean")
INLINE_MS = 1.0
"""A model call expected to take less than this (ms) runs on the stage's thread (:meth:`Container.fast`)."""


class Slot:
    """What every model behind a serving stage has, whatever it takes as input: a name (the arm), an AIMD
    batch size tuned to the SLO, a version, call counters, and the latency that decides whether it runs
    on the stage's thread.

    Args:
        name: the arm's name (replies, bandit weights, metrics).
        slo_ms: the SLO its AIMD batch size is tuned to.
    """

    kind = ""
    inline = False
    learns = False

    def __init__(self, name: str, slo_ms: float) -> None:
        self.name = name
        self.aimd = AIMDBatcher(slo_ms)
        self.version = 0
        self.calls = 0
        self.rows = 0
        self.failures = 0
        self.recent_row_ms = INLINE_MS  # unknown until measured: not "fast"; a failure sets it back (fail())
        self.store: MutableMapping[str, bytes] | None = None  # the stage's keyed store (per-key state)

    def fast(self, rows: int = 1) -> bool:
        """True when a call on ``rows`` rows is expected to take under 1 ms (from the recent calls' ms per
        row) and no call failed lately: such a call may run on the stage's thread, where a thread handoff
        would cost more than the call (a hung call would block it, so a slow or failing model never does)."""
        return rows * self.recent_row_ms < INLINE_MS

    def fail(self) -> None:
        """Account a call that raised: the model runs on its own thread until it is fast again."""
        self.failures += 1
        self.recent_row_ms = INLINE_MS

    def observe(self, rows: int, ms: float) -> None:
        """Account one batch call (AIMD sizing and the latency :meth:`fast` looks at)."""
        self.aimd.observe(rows, ms)
        self.recent_row_ms = 0.8 * self.recent_row_ms + 0.2 * ms / max(rows, 1)
        self.calls += 1
        self.rows += rows

    def flush_users(self) -> None:
        """Write the per-key state changed since the last call into :attr:`store` (before a checkpoint);
        containers without per-key state have nothing to write."""
        return None

    def refresh(self, registry: Registry | None, every_s: float = 1.0) -> bool:
        """Swap to a newly promoted version if there is one; True when it swapped."""
        return False

    def state(self) -> dict[str, Any]:
        """JSON-ready state for the stage's snapshot."""
        return {"aimd": self.aimd.size}

    def load(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state`."""
        self.aimd.size = int(state.get("aimd", self.aimd.size))


class Container(Slot, ABC):
    """One model behind the ``serve`` stage, answering ``(user, item)`` pairs (the MovieLens path)."""

    @abstractmethod
    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predictions, float64 ``(n,)``, for int64 ``users`` and ``items`` ``(n,)``."""

    def predict_rows(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Like :meth:`predict`, but a row's value does not depend on the rows batched with it, bit for bit:
        the learning path (the losses Exp3/Exp4 learn from) must give the same state when a replay after a
        crash cuts the stream elsewhere. Containers that compute row by row in numpy already do; batched
        runtimes (onnxruntime sums a row differently by its position in the batch) override this."""
        return self.predict(users, items)

    def predict_one(self, user: int, item: int) -> float:
        """One prediction (the feedback path scores one row at a time)."""
        return float(self.predict(np.array([user], np.int64), np.array([item], np.int64))[0])

    def learn(self, user: int, item: int, label: float) -> None:
        """One piece of feedback (only containers with ``learns``); fixed models ignore it."""
        return None


class MeanContainer(Container):
    """The running mean of the labels seen (``default`` before any)."""

    kind = "mean"
    inline = True
    learns = True

    def __init__(self, name: str, slo_ms: float, default: float = 0.0) -> None:
        super().__init__(name, slo_ms)
        self.count, self.total, self.default = 0, 0.0, float(default)

    def value(self) -> float:
        """The current mean (the default while nothing was learned)."""
        return self.total / self.count if self.count else self.default

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.full(len(users), self.value())

    def predict_one(self, user: int, item: int) -> float:
        return self.value()

    def learn(self, user: int, item: int, label: float) -> None:
        self.count += 1
        self.total += label

    def state(self) -> dict[str, Any]:
        return {**super().state(), "count": self.count, "total": self.total}

    def load(self, state: dict[str, Any]) -> None:
        super().load(state)
        self.count, self.total = int(state.get("count", 0)), float(state.get("total", 0.0))


class RegistryVersions(Slot, ABC):
    """A model slot whose model comes from the registry (``model``: the registered name).

    The first version is loaded in the caller's thread (there is nothing to serve before it); later
    ones are loaded and warmed up on a background thread, and :meth:`refresh` installs one between
    batches with a single assignment, so a swap never pauses the requests in flight.
    """

    def __init__(self, name: str, slo_ms: float, model: str) -> None:
        Slot.__init__(self, name, slo_ms)  # not super(): a feature model's base takes a task as well
        self.model = model
        self._checked = -1e18
        self._ready: tuple[Any, int] | None = None
        self._loading: threading.Thread | None = None
        self._refused: set[int] = set()
        self._pointer_error = ""

    def refresh(self, registry: Registry | None, every_s: float = 1.0) -> bool:
        ready, self._ready = self._ready, None
        if ready is not None:
            self._install(*ready)
            event(log, "serve.swapped", container=self.name, model=self.model, version=ready[1])
            return True
        if registry is None or time.monotonic() - self._checked < every_s:
            return False
        if self._loading is not None and self._loading.is_alive():
            return False
        self._checked = time.monotonic()
        if self.version == 0:
            self._fetch(registry)
            return self.refresh(None)
        self._loading = threading.Thread(target=self._fetch, args=(registry,), name=f"load-{self.name}", daemon=True)
        self._loading.start()
        return False

    def preflight(self, registry: Registry) -> None:
        """Load the newest promoted version that loads, as the first refresh will (a worker's start).

        Raises:
            ModelError: versions were promoted but none of them loads (each one's reason is named), or
                the promotion history cannot be read. Nothing promoted yet is not an error: the stage
                answers without this model (flagged ``default``) until a version is.
        """
        if not registry.history(self.model):
            event(log, "serve.cold", level=logging.WARNING, container=self.name, model=self.model,
                  hint=f"no promoted version yet: answers come without it until one is (dawnstream models "
                       f"promote {self.model} <version>)")
            return
        failures = self._first(registry)
        if self._ready is None:
            raise ModelError(
                f"serve stage: model {self.name!r}: no promoted version of {self.model!r} in {registry.root} can be "
                f"loaded ({'; '.join(failures)}); register and promote a good version (dawnstream models "
                f"promote {self.model} <version>), or remove {self.name!r} from the stage's models")

    def _first(self, registry: Registry) -> list[str]:
        """Nothing served yet: load the newest promoted version that loads, newest first through the
        promotion history (the last good one when the newest is broken). Returns why others failed."""
        failures: list[str] = []
        try:
            history = registry.history(self.model)
        except ModelError as e:
            event(log, "serve.swap_failed", level=logging.WARNING, container=self.name, model=self.model, error=str(e))
            return [str(e)]
        for v in dict.fromkeys(reversed(history)):
            if v in self._refused:
                continue
            why = self._try(registry, v)
            if why is None:
                if failures:
                    event(log, "serve.fallback", level=logging.WARNING, container=self.name, model=self.model,
                          version=v, refused=failures)
                return failures
            failures.append(f"version {v}: {why}")
        return failures

    def _try(self, registry: Registry, v: int) -> str | None:
        """Load version ``v`` into ``_ready``; None, or why it cannot be served (it is then refused for good)."""
        try:
            self._ready = (self._load(registry.get(self.model, v).read_bytes(), v), v)
            return None
        except Exception as e:  # noqa: BLE001 - whatever is wrong with a version, serving goes on
            # A broken or half-deleted version must not take serving down: keep the current one, refuse
            # this one for good (it is logged once, not at every refresh).
            self._refused.add(v)
            why = str(e) if isinstance(e, ModelError) else f"{type(e).__name__}: {e}"
            event(log, "serve.swap_failed", level=logging.WARNING, container=self.name, model=self.model, version=v,
                  error=why, keeps=self.version or None)
            return why

    def _fetch(self, registry: Registry) -> None:
        if self.version == 0:
            self._first(registry)
            return
        v: int | None = None
        try:
            v = registry.promoted_version(self.model)
        except ModelError as e:  # the promotion file: keep the current version (logged once per reason)
            if str(e) != self._pointer_error:
                self._pointer_error = str(e)
                event(log, "serve.swap_failed", level=logging.WARNING, container=self.name, model=self.model,
                      error=str(e), keeps=self.version)
            return
        self._pointer_error = ""
        if v is not None and v != self.version and v not in self._refused:
            self._try(registry, v)

    @abstractmethod
    def _load(self, artifact: bytes, version: int) -> Any:
        """Build (and warm up) the model from its artifact; runs off the serving thread.

        Raises:
            ModelError: the artifact is not a model this container can serve.
        """

    @abstractmethod
    def _install(self, model: Any, version: int) -> None:
        """Start answering with ``model`` (cheap: between two batches)."""


class RegisteredContainer(RegistryVersions, Container):
    """A ``serve`` container whose model comes from the registry (see :class:`RegistryVersions`)."""


class OnnxContainer(RegisteredContainer):
    """An ONNX graph run by onnxruntime; answers cached per (version, user, item) in an LRU."""

    kind = "onnx"

    def __init__(self, name: str, slo_ms: float, model: str, cache_size: int = 100_000) -> None:
        super().__init__(name, slo_ms, model)
        self.session: Any = None
        self.cache: LRUCache[tuple[int, int, int], float] = LRUCache(maxsize=max(cache_size, 1))
        self.hits = 0
        self.misses = 0

    def _load(self, artifact: bytes, version: int) -> Any:
        session = onnx_session(artifact)
        one = np.zeros(1, np.int64)
        try:  # warm up before serving: a first run allocates, and must not count against a request's SLO
            got = np.asarray(session.run(None, {"user_id": one, "item_id": one})[0], dtype=np.float64).reshape(-1)
        except Exception as e:  # noqa: BLE001 - onnxruntime's own error types
            raise ModelError(f"model {self.model!r} v{version} does not take (user_id, item_id) int64 inputs: "
                             f"{e}") from None
        if got.shape != (1,) or not np.isfinite(got).all():
            raise ModelError(f"model {self.model!r} v{version} answered one request with {got.tolist()[:4]}: "
                             "expected one finite number")
        return session

    def _install(self, model: Any, version: int) -> None:
        self.session, self.version = model, version  # one assignment each: a worker sees old or new

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        session, version = self.session, self.version
        if session is None:
            raise ModelError(f"no promoted version of {self.model!r} in the registry yet")
        out = np.empty(len(users))
        miss: list[int] = []
        cache = self.cache
        for j, (u, i) in enumerate(zip(users.tolist(), items.tolist(), strict=True)):
            v = cache.get((version, u, i))
            if v is None:
                miss.append(j)
            else:
                out[j] = v
        self.hits += len(users) - len(miss)
        self.misses += len(miss)
        if miss:
            idx = np.asarray(miss)
            got = session.run(None, {"user_id": users[idx].astype(np.int64), "item_id": items[idx].astype(np.int64)})
            vals = np.asarray(got[0], dtype=np.float64).reshape(-1)
            out[idx] = vals
            for j, v in zip(miss, vals.tolist(), strict=True):
                cache[(version, int(users[j]), int(items[j]))] = v
        return out

    def predict_rows(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """One onnxruntime call per row, past the cache (whose values came from batched calls): MLAS sums a
        row's terms in an order set by the row's position in the batch (1,590 of 6,000 MF predictions moved
        in their last bits between batches of 1, 7, 333 and 2,000 rows)."""
        session = self.session
        if session is None:
            raise ModelError(f"no promoted version of {self.model!r} in the registry yet")
        u, i = np.asarray(users, np.int64), np.asarray(items, np.int64)
        return np.array([float(np.asarray(session.run(None, {"user_id": u[j:j + 1], "item_id": i[j:j + 1]})[0])
                               .reshape(-1)[0]) for j in range(len(u))], np.float64)


class VeloxContainer(RegisteredContainer):
    """The Velox hybrid model; per-user weights live in the stage's keyed store (``velox/<user>``)."""

    kind = "velox"
    inline = True
    learns = True

    def __init__(self, name: str, slo_ms: float, model: str, lam: float = 8.0,
                 rating_range: tuple[float, float] | None = None) -> None:
        super().__init__(name, slo_ms, model)
        self.vx = VeloxModel(None, 0, lam=lam, rating_range=rating_range)
        self.learned = 0
        self.learn_s = 0.0

    def _load(self, artifact: bytes, version: int) -> Any:
        return BiasedMF.from_npz(artifact)

    def _install(self, model: Any, version: int) -> None:
        self.vx.swap(model, version)
        self.version = version

    def _stored(self, user: int) -> bytes | None:
        if self.store is None or user in self.vx.users:
            return None
        return self.store.get(f"{self.name}/{user}")

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        vx = self.vx
        return np.array([vx.predict_one(u, i, self._stored(u))
                         for u, i in zip(users.tolist(), items.tolist(), strict=True)])

    def predict_one(self, user: int, item: int) -> float:
        return self.vx.predict_one(user, item, self._stored(user))

    def learn(self, user: int, item: int, label: float) -> None:
        t0 = time.perf_counter()
        self.vx.learn_one(user, item, label, self._stored(user))
        self.learn_s += time.perf_counter() - t0
        self.learned += 1

    def flush_users(self) -> None:
        """Write the users changed since the last call into the keyed store (before a checkpoint)."""
        if self.store is None:
            return
        for u in self.vx.dirty:
            self.store[f"{self.name}/{u}"] = self.vx.users[u].to_bytes()
        self.vx.dirty.clear()

    def state(self) -> dict[str, Any]:
        return {**super().state(), "count": self.vx.count, "total": self.vx.total}

    def load(self, state: dict[str, Any]) -> None:
        super().load(state)
        self.vx.count, self.vx.total = int(state.get("count", 0)), float(state.get("total", 0.0))
        self.vx.users.clear()  # read back lazily from the restored store
        self.vx.dirty.clear()


class OnlineMFContainer(Container):
    """Biased MF learned online by SGD; vectors in the stage's keyed store (``<name>/u<id>``, ``<name>/i<id>``)."""

    kind = "online_mf"
    inline = True
    learns = True

    def __init__(self, name: str, slo_ms: float, rating_range: tuple[float, float] | None = None) -> None:
        super().__init__(name, slo_ms)
        self.mf = OnlineBiasedMF(rating_range=rating_range)

    def _load(self, user: int, item: int) -> None:
        if self.store is None:
            return
        for table, key in ((self.mf.users, user), (self.mf.items, item)):
            if key not in table:
                data = self.store.get(f"{self.name}/{'u' if table is self.mf.users else 'i'}{key}")
                if data is not None:
                    table[key] = np.frombuffer(data, dtype=np.float64).copy()

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        out = np.empty(len(users))
        for j, (u, i) in enumerate(zip(users.tolist(), items.tolist(), strict=True)):
            self._load(u, i)
            out[j] = self.mf.predict_one(u, i)
        return out

    def predict_one(self, user: int, item: int) -> float:
        self._load(user, item)
        return self.mf.predict_one(user, item)

    def learn(self, user: int, item: int, label: float) -> None:
        self._load(user, item)
        self.mf.learn_one(user, item, label)

    def flush_users(self) -> None:
        """Write changed user and item vectors into the keyed store (before a checkpoint)."""
        if self.store is None:
            return
        for u in self.mf.dirty_users:
            self.store[f"{self.name}/u{u}"] = self.mf.users[u].tobytes()
        for i in self.mf.dirty_items:
            self.store[f"{self.name}/i{i}"] = self.mf.items[i].tobytes()
        self.mf.dirty_users.clear()
        self.mf.dirty_items.clear()

    def state(self) -> dict[str, Any]:
        return {**super().state(), "count": self.mf.count, "total": self.mf.total}

    def load(self, state: dict[str, Any]) -> None:
        super().load(state)
        self.mf.count, self.mf.total = int(state.get("count", 0)), float(state.get("total", 0.0))
        self.mf.users.clear()
        self.mf.items.clear()
        self.mf.dirty_users.clear()
        self.mf.dirty_items.clear()


def build_container(spec: dict[str, Any], slo_ms: float, rating_range: tuple[float, float] | None,
                    cache_size: int, path: str) -> Container:
    """One container from its topology entry (``{name, kind, model, lam}``).

    Raises:
        ValueError: unknown kind or a missing ``model`` (with the key path, for the config error).
    """
    from dawnstream.errors import ConfigError

    if not isinstance(spec, dict):
        raise ConfigError(path, "expected a mapping like {name: velox, kind: velox, model: movielens-theta}")
    unknown = set(spec) - {"name", "kind", "model", "lam"}
    if unknown:
        raise ConfigError(f"{path}.{sorted(unknown)[0]}", "unknown key; expected name, kind, model, lam")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{path}.kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
    name = str(spec.get("name") or kind)
    if kind == "mean":
        return MeanContainer(name, slo_ms)
    if kind == "online_mf":
        return OnlineMFContainer(name, slo_ms, rating_range)
    model = spec.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{path}.model", f"a {kind} container needs the registry model name to serve")
    if kind == "onnx":
        return OnnxContainer(name, slo_ms, model, cache_size)
    return VeloxContainer(name, slo_ms, model, float(spec.get("lam", 8.0)), rating_range)
