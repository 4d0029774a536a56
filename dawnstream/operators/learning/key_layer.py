"""Velox's online layer over any feature model: per-key weights ``w_key`` on a model's feature output.

Velox (Crankshaw et al., CIDR'15, sections 3-4) predicts ``g(w_key · f(x; θ))``: ``f`` is an offline
feature model (retrained rarely), ``w_key`` is learned online for each key (a user, a merchant, a
sensor) from feedback, and a key never seen gets the population's weights. Here ``f(x; θ)`` is the
served model's own output, read as features ``z``:

- regression: ``z = [f(x), e(x), 1]`` and ``ŷ = w·z``; ``w_key`` is an online ridge regression
  (:mod:`.online_ridge`) shrunk towards the population weights;
- binary classification: ``z = [logit p(x), e(x), 1]`` and ``p̂ = σ(w·z)``; ``w_key`` is an online logistic
  regression by the online Newton step (Hazan, Agarwal & Kale, "Logarithmic regret algorithms for online
  convex optimization", 2007, section 3.3 - equivalently a Laplace-approximated Bayesian logistic
  regression, Chapelle & Li, NIPS'11): ``A ← A + p(1-p) z zᵀ`` by Sherman-Morrison,
  ``w ← w + A⁻¹ z (y - p)``, starting from ``A = λI`` and the population weights;
- multi-class: ``z = log p(x)`` and ``p̂ = softmax(z + b_key)``; ``b_key`` (one bias per class) moves by
  a gradient step on the log loss, ``b ← b - η (p̂ - e_y) - ηλ/n (b - b̄)``.

``e(x)`` is an optional embedding the model outputs next to its answer (a matrix factorisation's item
vector, a network's penultimate layer): with it the layer learns, per key, a linear model on the model's
features, as Velox does with θ's item factors; without it, a per-key recalibration of the model's answer.
Every weight starts from ``[1, 0, ..., 0]`` ("trust the model"), so an untrained layer answers exactly what
the model does. The population weights ``w̄`` are learned by the same update from every key's
feedback; a new key starts from the population's weights of that moment.

All arithmetic is plain loops (numba): no BLAS call, so the result is the same bits on every CPU, and
a replay after a crash learns the same weights.

>>> layer = KeyLayer("binary", k=2)
>>> base = [0.6, 0.4]                          # the model says class 0 at 60%
>>> round(layer.predict("alice", base)[0], 3)  # untrained: the model's answer
0.6
>>> for _ in range(30):
...     layer.learn("alice", base, 1.0)        # but alice's rows are all class 1,
...     layer.learn("carol", base, 0.0)        # and carol's class 0
>>> [round(layer.predict(key, base)[1], 2) for key in ("alice", "bob", "carol")]   # bob: never seen
[0.79, 0.48, 0.17]
"""

from __future__ import annotations

import math
import struct
from collections.abc import MutableMapping, Sequence

import numba
import numpy as np

from dawnstream.operators.learning.online_ridge import sm_rank_one, sm_update

_HEADER = struct.Struct("<4sii")
_MAGIC = b"KLY1"


@numba.njit(cache=True, fastmath=False)
def ons_update(a_inv: np.ndarray, w: np.ndarray, z: np.ndarray, y: float) -> None:  # pragma: no cover - compiled
    """One online Newton step of a logistic regression in place: ``a_inv`` (d, d), ``w`` (d,), ``z`` (d,)
    float64, ``y`` in {0, 1}."""
    d = z.shape[0]
    t = 0.0
    for i in range(d):
        t += w[i] * z[i]
    p = 1.0 / (1.0 + math.exp(-t)) if t >= 0 else math.exp(t) / (1.0 + math.exp(t))
    h = max(p * (1.0 - p), 1e-6)
    sm_rank_one(a_inv, z, 1.0 / h)
    g = y - p
    for i in range(d):
        acc = 0.0
        for j in range(d):
            acc += a_inv[i, j] * z[j]
        w[i] += acc * g


class KeyState:
    """One key's weights: ``a_inv`` (d, d), ``s`` (d,), ``w`` (d,), ``prior`` (d,) float64, ``n`` feedback rows."""

    __slots__ = ("a_inv", "s", "w", "prior", "n")

    def __init__(self, d: int, prior: np.ndarray, lam: float) -> None:
        self.a_inv = np.eye(d) / lam
        self.s = np.zeros(d)
        self.w = prior.copy()
        self.prior = prior.copy()
        self.n = 0

    def to_bytes(self) -> bytes:
        """Compact binary: header (magic, d, n), then ``a_inv``, ``s``, ``w``, ``prior``."""
        d = len(self.w)
        return b"".join([_HEADER.pack(_MAGIC, d, self.n), self.a_inv.tobytes(), self.s.tobytes(),
                         self.w.tobytes(), self.prior.tobytes()])

    @classmethod
    def from_bytes(cls, data: bytes, d: int) -> KeyState:
        """Inverse of :meth:`to_bytes`.

        Raises:
            ValueError: not a key state of width ``d``.
        """
        magic, dd, n = _HEADER.unpack_from(data)
        if magic != _MAGIC or dd != d or len(data) != _HEADER.size + 8 * (d * d + 3 * d):
            raise ValueError(f"not a key-layer state of width {d}")
        st = cls.__new__(cls)
        off = _HEADER.size
        st.a_inv = np.frombuffer(data, np.float64, d * d, off).reshape(d, d).copy()
        off += 8 * d * d
        st.s, st.w, st.prior = (np.frombuffer(data, np.float64, d, off + 8 * d * j).copy() for j in range(3))
        st.n = n
        return st


class KeyLayer:
    """Per-key online weights over a model's output (see the module docstring).

    Args:
        task: ``regression``, ``binary`` or ``multiclass``.
        k: the number of classes (1 for regression).
        lam: strength of the pull towards the population weights (λ; larger: a key needs more feedback to
            move away from the population).
        lr: the multi-class bias step η.
        store: where key states persist (the stage's keyed store); None = memory only.
        prefix: key prefix in ``store``.
    """

    def __init__(self, task: str, k: int = 1, lam: float = 4.0, lr: float = 0.1,
                 store: MutableMapping[str, bytes] | None = None, prefix: str = "", extra: int = 0) -> None:
        self.task, self.k, self.lam, self.lr = task, int(k), float(lam), float(lr)
        self.keys: dict[str, KeyState] = {}
        self.dirty: set[str] = set()
        self.store = store
        self.prefix = prefix
        self.extra = -1
        self.resize(extra)

    def resize(self, extra: int) -> None:
        """Use embeddings of width ``extra`` from now on (a new model version may change it): the weights
        learned for another width cannot be used, so every key starts again from the model's answer.

        Raises:
            ValueError: an embedding for a multi-class task.
        """
        if extra == self.extra:
            return
        if extra and self.task == "multiclass":
            raise ValueError("a multi-class online layer takes no embedding")
        self.extra = int(extra)
        self.d = self.k if self.task == "multiclass" else 2 + self.extra
        start = np.zeros(self.d)
        if self.task != "multiclass":
            start[0] = 1.0
        self.population = KeyState(self.d, start, self.lam)
        self.keys.clear()
        self.dirty.clear()

    # -- features ---------------------------------------------------------------------------------
    def features(self, base: float | Sequence[float], emb: Sequence[float] = ()) -> np.ndarray:
        """``z`` for the model's answer ``base`` (a number, or class probabilities) and its embedding ``emb``
        (``extra`` values).

        Raises:
            ValueError: ``emb`` is not ``extra`` values long.
        """
        if len(emb) != max(self.extra, 0):
            raise ValueError(f"expected an embedding of {self.extra} values, got {len(emb)}")
        if self.task == "regression":
            return np.array([float(base), *emb, 1.0])  # type: ignore[arg-type]
        p = np.clip(np.asarray(base, dtype=np.float64), 1e-6, 1.0 - 1e-6)
        if self.task == "binary":
            return np.array([math.log(p[1] / p[0]), *emb, 1.0])
        return np.log(p)

    def _answer(self, st: KeyState, z: np.ndarray) -> list[float] | float:
        t = 0.0
        if self.task != "multiclass":
            for j in range(self.d):  # a plain loop: the same sum, in the same order, on every CPU
                t += float(z[j]) * float(st.w[j])
        if self.task == "regression":
            return t
        if self.task == "binary":
            p1 = 1.0 / (1.0 + math.exp(-t)) if t >= 0 else math.exp(t) / (1.0 + math.exp(t))
            return [1.0 - p1, p1]
        u = [float(z[j] + st.w[j]) for j in range(self.d)]
        top = max(u)
        e = [math.exp(v - top) for v in u]
        total = sum(e)
        return [v / total for v in e]

    # -- keys ---------------------------------------------------------------------------------------
    def state(self, key: str | None) -> KeyState:
        """The key's state (the population's for None or a key never seen; not created)."""
        if key is None:
            return self.population
        st = self.keys.get(key)
        if st is None and self.store is not None:
            data = self.store.get(self.prefix + key)
            if data is not None:
                try:
                    st = self.keys[key] = KeyState.from_bytes(data, self.d)
                except ValueError:  # learned for an embedding of another width (an earlier model version)
                    st = None
        return st if st is not None else self.population

    def predict(self, key: str | None, base: float | Sequence[float], emb: Sequence[float] = ()) -> list[float] | float:
        """The layer's answer for ``key`` given the model's answer ``base`` (and embedding ``emb``)."""
        return self._answer(self.state(key), self.features(base, emb))

    def learn(self, key: str | None, base: float | Sequence[float], y: float, emb: Sequence[float] = ()) -> None:
        """One feedback row: the model's answer ``base`` (and embedding ``emb``) when the request was served,
        its label ``y`` (a number, or the class index). Updates the key and the population."""
        z = self.features(base, emb)
        targets = [self.population]
        if key is not None:
            st = self.state(key)
            if st is self.population:
                st = KeyState(self.d, self.population.w, self.lam)
                self.keys[key] = st
            targets.append(st)
            self.dirty.add(key)
        for st in targets:
            self._step(st, z, y)

    def _step(self, st: KeyState, z: np.ndarray, y: float) -> None:
        st.n += 1
        if self.task == "regression":
            sm_update(st.a_inv, st.s, st.w, z, float(y), st.prior, self.lam)
        elif self.task == "binary":
            ons_update(st.a_inv, st.w, z, float(y))
        else:
            p = self._answer(st, z)
            shrink = self.lam / (self.lam + st.n)
            for j in range(self.d):
                g = p[j] - (1.0 if j == int(y) else 0.0)  # type: ignore[index]
                st.w[j] -= self.lr * (g + shrink * (st.w[j] - st.prior[j]))

    def flush(self) -> None:
        """Write the keys changed since the last call into :attr:`store` (before a checkpoint)."""
        if self.store is not None:
            for key in self.dirty:
                self.store[self.prefix + key] = self.keys[key].to_bytes()
        self.dirty.clear()

    def forget_memory(self) -> None:
        """Drop the in-memory key states (after a restore: they are read back from the store)."""
        self.keys.clear()
        self.dirty.clear()
