"""Model selection from feedback: Exp4 (an ensemble) and Exp3 (one model per request).

Clipper (Crankshaw et al., NSDI'17, section 5.2) selects among model containers with the adversarial
bandit algorithms of Auer et al. ("The nonstochastic multiarmed bandit problem", SIAM J. Comput. 2002):

- **Exp4** answers with the weighted mean of every model's prediction; with full feedback each model's
  weight is multiplied by ``exp(-η ℓ_m)`` (``ℓ_m`` its squared error scaled to [0, 1]).
- **Exp3** answers each request with one model drawn with probability ``(1-γ) w_m/Σw + γ/K``; only that
  model's loss is observed, and its weight moves by ``exp(-η ℓ_m / p_m)`` (importance weighted).

Weights are kept as logarithms, and their spread is capped (``max_spread`` nats) so that a model that was
bad can win again after it is fixed, and a good one that breaks loses its traffic within a few hundred
pieces of feedback. The draw is a hash of the request's id: a replay after a crash makes the same choices.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np


def unit_hash(text: str) -> float:
    """A uniform number in [0, 1) from ``text`` (BLAKE2b), the same on every run and machine."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") / 2.0**64


class _LogWeights:
    # Plain floats, not numpy: with a handful of arms the per-feedback update is call overhead.
    def __init__(self, arms: list[str], eta: float, max_spread: float = 12.0, discount: float = 0.0) -> None:
        self.arms = list(arms)
        self.index = {a: j for j, a in enumerate(self.arms)}
        self.eta = float(eta)
        self.discount = float(discount)
        self.max_spread = float(max_spread)
        self.logw = [0.0] * len(arms)
        self.updates = 0
        self._w: list[float] | None = None

    def weights(self) -> np.ndarray:
        """Normalised weights, ``(K,)`` float64."""
        return np.asarray(self.weight_list())

    def weight_list(self) -> list[float]:
        """Normalised weights as a list (cached until the next update)."""
        if self._w is None:
            top = max(self.logw)
            w = [math.exp(v - top) for v in self.logw]
            total = sum(w)
            self._w = [v / total for v in w]
        return self._w

    def _penalise(self, losses: dict[int, float]) -> None:
        keep = 1.0 - self.discount
        lw = [v * keep for v in self.logw]
        for j, loss in losses.items():
            lw[j] -= self.eta * loss
        floor = max(lw) - self.max_spread
        self.logw = [v if v > floor else floor for v in lw]
        self._w = None
        self.updates += 1

    def state(self) -> dict[str, Any]:
        return {"arms": self.arms, "logw": [float(v) for v in self.logw], "updates": self.updates}

    def load(self, state: dict[str, Any]) -> None:
        if state.get("arms") == self.arms:
            self.logw = [float(v) for v in state["logw"]]
            self.updates = int(state.get("updates", 0))
            self._w = None


class Exp4(_LogWeights):
    """Ensemble of ``arms`` by exponentially weighted averaging.

    >>> e = Exp4(["good", "bad"], eta=2.0)
    >>> for _ in range(50):
    ...     e.update({"good": 3.0, "bad": 5.0}, 3.0, scale=16.0)
    >>> round(e.combine({"good": 3.0, "bad": 5.0}), 2)
    3.0
    """

    def combine(self, preds: dict[str, float]) -> float:
        """Weighted mean of the predictions that arrived (missing models are left out, the rest renormalised).

        Raises:
            ValueError: ``preds`` is empty.
        """
        if not preds:
            raise ValueError("no model answered")
        w, index = self.weight_list(), self.index
        num = den = 0.0
        for arm, p in preds.items():
            wa = w[index[arm]]
            num += wa * p
            den += wa
        return num / den if den > 0 else sum(preds.values()) / len(preds)

    def update(self, preds: dict[str, float], label: float, scale: float) -> None:
        """Full-information feedback: every model's squared error, divided by ``scale``."""
        self._penalise({self.index[a]: min((p - label) ** 2 / scale, 1.0) for a, p in preds.items()})


class Exp3(_LogWeights):
    """One arm per request, learned from the chosen arm's loss only.

    Args:
        gamma: exploration share spread evenly over the arms (each gets at least ``gamma/K``).
    """

    def __init__(self, arms: list[str], eta: float, gamma: float = 0.03, max_spread: float = 12.0,
                 discount: float = 0.0) -> None:
        super().__init__(arms, eta, max_spread, discount)
        self.gamma = float(gamma)

    def probabilities(self) -> np.ndarray:
        """Probability of drawing each arm, ``(K,)``."""
        return (1.0 - self.gamma) * self.weights() + self.gamma / len(self.arms)

    def choose(self, request_id: str) -> tuple[str, float]:
        """The arm drawn for ``request_id`` and its probability (deterministic given the weights)."""
        p = self.probabilities()
        i = int(np.searchsorted(np.cumsum(p), unit_hash(request_id) * p.sum(), side="right"))
        i = min(i, len(p) - 1)
        return self.arms[i], float(p[i])

    def update(self, arm: str, prediction: float, label: float, probability: float, scale: float) -> None:
        """Bandit feedback on one draw: the chosen arm's scaled squared error, importance weighted."""
        loss = min((prediction - label) ** 2 / scale, 1.0)
        self._penalise({self.index[arm]: loss / max(probability, 1e-6)})


def regret(chosen_losses: list[float], per_arm_losses: dict[str, list[float]]) -> float:
    """Cumulative loss of the choices minus that of the best single arm in hindsight."""
    if not chosen_losses:
        return 0.0
    best = min(math.fsum(v) for v in per_arm_losses.values())
    return math.fsum(chosen_losses) - best
