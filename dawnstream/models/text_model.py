"""A noise-aware text classifier: hashed word n-grams + logistic regression, trained on probabilistic labels.

Snorkel's last step (Ratner et al., VLDB'18, section 3.3): the end model is trained on the label
model's probabilities, minimising the *expected* loss ``Σ_i Σ_y p_iy · ℓ(x_i, y)`` - here each row
enters once per class with weight ``p_iy`` (scikit-learn's ``sample_weight``). It generalises past the
LFs: it labels rows no LF covers. Features: scikit-learn's ``HashingVectorizer`` (stateless, so the
artifact is just the weights); the artifact is an ``.npz`` of the coefficients and the vectorizer's
settings (never pickle).

>>> m = HashedTextModel.fit(["a great film", "dull and flat", "great fun", "flat, dull"],
...                         [[0.1, 0.9], [0.8, 0.2], [0.2, 0.8], [0.9, 0.1]])
>>> m.predict_proba(["great"]).argmax(axis=1).tolist()
[1]
>>> again = HashedTextModel.from_npz(m.to_npz())
>>> bool(np.allclose(again.predict_proba(["dull"]), m.predict_proba(["dull"])))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dawnstream.models.artifacts import from_npz, to_npz
from dawnstream.operators.rowwise import softmax_rows

N_FEATURES = 1 << 18


def _vectorizer(n_features: int, ngram_max: int):  # noqa: ANN202 - scikit-learn type
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=n_features, ngram_range=(1, ngram_max), alternate_sign=False,
                             norm="l2", lowercase=True)


@dataclass
class HashedTextModel:
    """Weights ``coef`` ``(k, n_features)`` (``(1, n_features)`` for two classes) and ``intercept``."""

    coef: np.ndarray
    intercept: np.ndarray
    k: int
    n_features: int = N_FEATURES
    ngram_max: int = 2

    @classmethod
    def fit(cls, texts: Sequence[str], probs: np.ndarray | Sequence[Sequence[float]], c: float = 4.0,
            n_features: int = N_FEATURES, ngram_max: int = 2) -> HashedTextModel:
        """Fit on ``texts`` with class probabilities ``probs`` ``(n, k)`` (hard labels: one-hot rows).

        Raises:
            ValueError: no rows, or ``probs`` not ``(len(texts), k)`` with k ≥ 2.
        """
        from sklearn.linear_model import LogisticRegression

        P = np.asarray(probs, float)
        if len(texts) == 0 or P.ndim != 2 or P.shape[0] != len(texts) or P.shape[1] < 2:
            raise ValueError(f"expected (rows, classes) probabilities for {len(texts)} texts, got {P.shape}")
        k = P.shape[1]
        X = _vectorizer(n_features, ngram_max).transform(list(texts))
        from scipy.sparse import vstack

        Xk = vstack([X] * k)
        y = np.repeat(np.arange(k), len(texts))
        w = P.T.ravel()
        keep = w > 1e-9
        if len(np.unique(y[keep])) < 2:  # every row certain of one class: nothing to separate
            keep = np.ones_like(keep)
            w = np.maximum(w, 1e-6)
        lr = LogisticRegression(C=c, max_iter=1000)
        lr.fit(Xk[keep], y[keep], sample_weight=w[keep])
        return cls(lr.coef_.astype(np.float32), lr.intercept_.astype(np.float64), k, n_features, ngram_max)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, k)`` float64 class probabilities."""
        X = _vectorizer(self.n_features, self.ngram_max).transform(list(texts))
        z = np.asarray(X @ self.coef.T.astype(np.float64)) + self.intercept
        if self.k == 2 and z.shape[1] == 1:
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        return softmax_rows(z)  # a text's probabilities do not depend on the texts batched with it

    def to_npz(self) -> bytes:
        """The artifact: coefficients and settings as a plain ``.npz``."""
        return to_npz({"coef": self.coef, "intercept": self.intercept,
                       "settings": np.array([self.k, self.n_features, self.ngram_max], np.int64)})

    @classmethod
    def from_npz(cls, data: bytes) -> HashedTextModel:
        """Load :meth:`to_npz` bytes.

        Raises:
            ModelError: not a plain npz, or arrays missing.
        """
        from dawnstream.models.registry import ModelError

        a = from_npz(data)
        if not {"coef", "intercept", "settings"} <= set(a):
            raise ModelError(f"not a text model artifact: arrays {sorted(a)}")
        try:
            k, n_features, ngram_max = (int(v) for v in a["settings"].reshape(-1))
            coef = np.asarray(a["coef"], np.float32)
            intercept = np.asarray(a["intercept"], np.float64).reshape(-1)
        except (ValueError, TypeError) as e:
            raise ModelError(f"text model artifact has unusable arrays: {type(e).__name__}: {e}") from None
        shapes = ((1 if k == 2 else k, n_features), (k, n_features))
        if k < 2 or n_features < 1 or not 1 <= ngram_max <= 5 or coef.shape not in shapes \
                or intercept.shape != (coef.shape[0],):
            raise ModelError(f"text model artifact is inconsistent: k={k}, n_features={n_features}, "
                             f"ngram_max={ngram_max}, coef {coef.shape}, intercept {intercept.shape}")
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise ModelError("text model artifact has values that are not finite")
        return cls(coef, intercept, k, n_features, ngram_max)
