"""Biased matrix factorisation trained by alternating least squares: the offline model θ.

Prediction ``r̂(u, i) = μ + b_u + b_i + p_u · q_i`` (Koren, Bell & Volinsky, "Matrix factorization
techniques for recommender systems", IEEE Computer 2009, eq. 4). Training alternates exact ridge
solves for every user's ``[p_u, b_u]`` with the items fixed, then every item's ``[q_i, b_i]``
(Zhou et al., "Large-scale parallel collaborative filtering for the Netflix prize", 2008 - ALS).

In Velox (Crankshaw et al., CIDR'15, section 3) the item side ``(q_i, b_i)`` is the slowly changing
feature model f(x; θ) retrained offline, and the user side is what the online learner re-learns per
user (:mod:`dawnstream.operators.learning.velox`). The full model is also served on its own, exported
to ONNX (:meth:`BiasedMF.to_onnx`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dawnstream.models.artifacts import from_npz, to_npz
from dawnstream.models.registry import ModelError
from dawnstream.operators.rowwise import row_dot


@dataclass
class BiasedMF:
    """A trained biased MF model, indexed by raw ids.

    Attributes:
        mu: global mean rating.
        user_ids: int64 ``(U,)`` raw user ids, sorted; ``P`` ``(U, k)`` float64 and ``bu`` ``(U,)`` follow it.
        item_ids: int64 ``(I,)`` raw item ids, sorted; ``Q`` ``(I, k)`` and ``bi`` ``(I,)`` follow it.

    Unknown users or items contribute nothing but ``μ`` and the other side's bias.
    """

    mu: float
    user_ids: np.ndarray
    P: np.ndarray
    bu: np.ndarray
    item_ids: np.ndarray
    Q: np.ndarray
    bi: np.ndarray

    @property
    def k(self) -> int:
        """Number of latent factors."""
        return int(self.Q.shape[1])

    def user_index(self, users: np.ndarray) -> np.ndarray:
        """Row of each raw user id in ``P`` (-1 when unknown)."""
        return _lookup(self.user_ids, users)

    def item_index(self, items: np.ndarray) -> np.ndarray:
        """Row of each raw item id in ``Q`` (-1 when unknown)."""
        return _lookup(self.item_ids, items)

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings, float64 ``(n,)``, for int64 ``users`` and ``items`` ``(n,)``."""
        ui, ii = self.user_index(np.asarray(users)), self.item_index(np.asarray(items))
        ku, ki = ui >= 0, ii >= 0
        out = np.full(len(ui), self.mu, dtype=np.float64)
        out[ku] += self.bu[ui[ku]]
        out[ki] += self.bi[ii[ki]]
        both = ku & ki
        out[both] += row_dot(self.P[ui[both]], self.Q[ii[both]])  # per request, whatever its batch
        return out

    def population_weights(self) -> np.ndarray:
        """Mean of the users' ``[p_u, b_u]``, ``(k+1,)``: the cold-start weights of a new user."""
        if len(self.user_ids) == 0:
            return np.zeros(self.k + 1)
        return np.concatenate([self.P.mean(axis=0), [self.bu.mean()]])

    # -- artifacts ----------------------------------------------------------------------------
    def to_npz(self) -> bytes:
        """The model as ``.npz`` bytes (no pickle)."""
        return to_npz({"mu": np.array([self.mu]), "user_ids": self.user_ids, "P": self.P, "bu": self.bu,
                       "item_ids": self.item_ids, "Q": self.Q, "bi": self.bi})

    @classmethod
    def from_npz(cls, data: bytes) -> BiasedMF:
        """Load :meth:`to_npz` bytes.

        Raises:
            ModelError: a missing array or inconsistent shapes.
        """
        a = from_npz(data)
        try:
            m = cls(float(a["mu"].reshape(-1)[0]), a["user_ids"].astype(np.int64).reshape(-1),
                    a["P"].astype(np.float64), a["bu"].astype(np.float64).reshape(-1),
                    a["item_ids"].astype(np.int64).reshape(-1), a["Q"].astype(np.float64),
                    a["bi"].astype(np.float64).reshape(-1))
        except KeyError as e:
            raise ModelError(f"biased MF artifact lacks array {e}") from None
        except (IndexError, ValueError, TypeError) as e:  # an empty mu, strings where numbers belong...
            raise ModelError(f"biased MF artifact has unusable arrays: {type(e).__name__}: {e}") from None
        shapes = {k: getattr(m, k).shape for k in ("user_ids", "P", "bu", "item_ids", "Q", "bi")}
        if m.P.ndim != 2 or m.Q.ndim != 2 or m.P.shape[1] != m.Q.shape[1] \
                or not (len(m.user_ids) == len(m.P) == len(m.bu)) or not (len(m.item_ids) == len(m.Q) == len(m.bi)):
            raise ModelError(f"biased MF artifact has inconsistent shapes: {shapes}")
        if not all(np.isfinite(v).all() for v in (m.P, m.Q, m.bu, m.bi)) or not np.isfinite(m.mu):
            raise ModelError("biased MF artifact has values that are not finite")
        return m

    def to_onnx(self) -> bytes:
        """An ONNX graph ``(user_id int64[n], item_id int64[n]) -> (rating float32[n], qi
        float32[n, k+2])``; ``qi`` is ``[q_i, 1, b_i]``, θ's side of the dot product: the features
        a per-user online layer learns on (Velox, :mod:`~dawnstream.operators.learning.key_layer`).

        Raw ids index dense tables (ids past the largest known one, or below 0, hit a zero row), so the
        graph is Clip, Gather, Mul, ReduceSum and Add (opset 17). Built with ``onnx.helper``.
        """
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        def dense(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
            top = int(ids.max()) + 1 if len(ids) else 0
            out = np.zeros((top + 1,) + rows.shape[1:], dtype=np.float32)  # last row: unknown ids
            if len(ids):
                out[ids] = rows
            return out

        pu = dense(self.user_ids, np.column_stack([self.P, self.bu]))
        qi = dense(self.item_ids, np.column_stack([self.Q, self.bi]))
        k = self.k
        # Append a 1 so that [p_u, b_u, 1] . [q_i, 1, b_i] = p.q + b_u + b_i.
        pu = np.column_stack([pu, np.ones(len(pu), dtype=np.float32)])
        qi = np.column_stack([qi[:, :k], np.ones(len(qi), dtype=np.float32), qi[:, k]])
        pu[-1, :] = 0.0
        pu[-1, k + 1] = 1.0  # unknown user: keeps b_i
        qi[-1, :] = 0.0
        qi[-1, k] = 1.0  # unknown item: keeps b_u
        inits = [
            numpy_helper.from_array(pu, "user_table"), numpy_helper.from_array(qi, "item_table"),
            numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
            numpy_helper.from_array(np.array(len(pu) - 1, dtype=np.int64), "user_top"),
            numpy_helper.from_array(np.array(len(qi) - 1, dtype=np.int64), "item_top"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array(self.mu, dtype=np.float32), "mu"),
        ]
        nodes = [
            # Ids past the table (or negative) are mapped to the last, "unknown" row.
            helper.make_node("Clip", ["user_id", "zero", "user_top"], ["u_clip"]),
            helper.make_node("Clip", ["item_id", "zero", "item_top"], ["i_clip"]),
            helper.make_node("Equal", ["u_clip", "user_id"], ["u_ok"]),
            helper.make_node("Equal", ["i_clip", "item_id"], ["i_ok"]),
            helper.make_node("Where", ["u_ok", "u_clip", "user_top"], ["u_row"]),
            helper.make_node("Where", ["i_ok", "i_clip", "item_top"], ["i_row"]),
            helper.make_node("Gather", ["user_table", "u_row"], ["pu"], axis=0),
            helper.make_node("Gather", ["item_table", "i_row"], ["qi"], axis=0),
            helper.make_node("Mul", ["pu", "qi"], ["prod"]),
            helper.make_node("ReduceSum", ["prod", "axis1"], ["dot"], keepdims=0),
            helper.make_node("Add", ["dot", "mu"], ["rating"]),
        ]
        graph = helper.make_graph(
            nodes, "biased_mf",
            [helper.make_tensor_value_info("user_id", TensorProto.INT64, ["n"]),
             helper.make_tensor_value_info("item_id", TensorProto.INT64, ["n"])],
            [helper.make_tensor_value_info("rating", TensorProto.FLOAT, ["n"]),
             helper.make_tensor_value_info("qi", TensorProto.FLOAT, ["n", k + 2])], initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="dawnstream")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return bytes(model.SerializeToString())


def _lookup(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(ids, values)
    pos = np.minimum(pos, max(len(ids) - 1, 0))
    ok = (ids[pos] == values) if len(ids) else np.zeros(len(values), dtype=bool)
    return np.where(ok, pos, -1).astype(np.int64)


def _groups(index: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(n + 1))
    return order, bounds


def _solve_side(own: np.ndarray, other: np.ndarray, target: np.ndarray, other_f: np.ndarray, n_own: int,
                reg: float) -> np.ndarray:
    """Ridge solve of ``[f, b]`` for each entity of one side; rows of ``own`` index that side."""
    k = other_f.shape[1]
    order, bounds = _groups(own, n_own)
    out = np.zeros((n_own, k + 1))
    eye = reg * np.eye(k + 1)
    eye[k, k] = reg * 0.1  # biases are shrunk less than factors
    X_all = np.column_stack([other_f[other[order]], np.ones(len(order))])
    y_all = target[order]
    for e in range(n_own):
        lo, hi = bounds[e], bounds[e + 1]
        if hi == lo:
            continue
        X, y = X_all[lo:hi], y_all[lo:hi]
        out[e] = np.linalg.solve(X.T @ X + eye, X.T @ y)
    return out


def fit_als(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, k: int = 20, reg: float = 8.0,
            iters: int = 12, seed: int = 0) -> BiasedMF:
    """Train a :class:`BiasedMF` by ALS.

    Args:
        users, items: int64 ``(n,)`` raw ids; ratings: float ``(n,)``.
        k: latent factors. reg: ridge penalty on factors (biases get a tenth of it).
        iters: ALS sweeps (each solves every user, then every item). seed: initial item factors.

    Cost: about ``iters * (U + I)`` solves of ``(k+1)²`` systems (1.5 s for MovieLens-100k, k=20, 12 sweeps).

    Raises:
        ModelError: no ratings, or arrays of different lengths.
    """
    users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    r = np.asarray(ratings, dtype=np.float64)
    if not (len(users) == len(items) == len(r)) or len(r) == 0:
        raise ModelError(f"ALS needs equally long, non-empty arrays (got {len(users)}, {len(items)}, {len(r)})")
    user_ids, u = np.unique(users, return_inverse=True)
    item_ids, i = np.unique(items, return_inverse=True)
    mu = float(r.mean())
    rng = np.random.default_rng(seed)
    Q = rng.normal(0.0, 0.1, (len(item_ids), k))
    bi = np.zeros(len(item_ids))
    P, bu = np.zeros((len(user_ids), k)), np.zeros(len(user_ids))
    for _ in range(iters):
        w = _solve_side(u, i, r - mu - bi[i], Q, len(user_ids), reg)
        P, bu = w[:, :k], w[:, k]
        w = _solve_side(i, u, r - mu - bu[u], P, len(item_ids), reg)
        Q, bi = w[:, :k], w[:, k]
    return BiasedMF(mu, user_ids, P, bu, item_ids, Q, bi)
