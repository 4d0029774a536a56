"""ADR: the adaptable damped reservoir (MacroBase, SIGMOD 2017, sec. 4.2).

A fixed-size uniform sample over a stream in which older rows count less: Chao's weighted
reservoir (Chao 1982) keeps k rows; the i-th arriving row (weight 1) enters with probability
k / W_i, where W_i is the running total weight, replacing a uniformly chosen slot. Decay does not
touch stored rows: at the end of every period the running weight is multiplied by (1 - r), which
raises the admission probability of newer rows ("damped"). Periods are counted in rows here, so
the sample depends only on the row sequence and the seed - never on how rows were batched.

Insertion is vectorised: each row consumes exactly two consecutive doubles of one generator
(admission, slot), so a stream cut into batches anywhere gives the same reservoir as one big batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ADR:
    """Adaptable damped reservoir of ``size`` rows with ``dims`` float64 columns.

    Args:
        size: k, rows kept (>= 1).
        dims: columns per row.
        seed: seed of the PCG64 generator (state is snapshotted with the reservoir).

    >>> r = ADR(size=3, dims=1, seed=0)
    >>> r.insert(np.arange(10.0).reshape(-1, 1)); r.count, r.sample().shape
    (3, (3, 1))
    """

    def __init__(self, size: int, dims: int = 1, seed: int = 0) -> None:
        if size < 1:
            raise ValueError("reservoir size must be >= 1")
        self.size = size
        self.dims = dims
        self.data = np.empty((size, dims), dtype=np.float64)
        self.count = 0  # filled slots
        self.weight = 0.0  # running total weight W
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def insert(self, rows: np.ndarray) -> None:
        """Offer ``rows`` (n x dims float64, weight 1 each) in order."""
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, self.dims)
        n = rows.shape[0]
        if n == 0:
            return
        draws = self.rng.random(2 * n)  # one stream of doubles, two per row, in row order
        u = draws[0::2]
        slots = np.minimum((draws[1::2] * self.size).astype(np.int64), self.size - 1)
        fill = min(self.size - self.count, n)
        if fill > 0:
            self.data[self.count:self.count + fill] = rows[:fill]
            self.count += fill
        w = self.weight + np.arange(1, n + 1, dtype=np.float64)
        self.weight = float(w[-1])
        if fill == n:
            return
        admit = np.nonzero(u[fill:] < self.size / w[fill:])[0] + fill
        if admit.size:
            # Later rows win when two hit the same slot, as in sequential processing.
            s = slots[admit][::-1]
            uniq, first = np.unique(s, return_index=True)
            self.data[uniq] = rows[admit[::-1][first]]

    def decay(self, rate: float) -> None:
        """End of a period: W <- W * (1 - rate)."""
        self.weight *= 1.0 - rate

    def sample(self) -> np.ndarray:
        """The current sample (count x dims view)."""
        return self.data[: self.count]

    def to_state(self) -> dict[str, Any]:
        """JSON-safe state: arrays as lists, the generator's bit-generator state."""
        return {"size": self.size, "dims": self.dims, "count": self.count, "weight": self.weight,
                "data": self.data[: self.count].tolist(), "rng": _rng_state(self.rng)}

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> ADR:
        r = cls(int(st["size"]), int(st["dims"]))
        r.count = int(st["count"])
        r.weight = float(st["weight"])
        if r.count:
            r.data[: r.count] = np.asarray(st["data"], dtype=np.float64).reshape(r.count, r.dims)
        rng = dict(st["rng"])
        rng["state"] = {k: int(v) for k, v in rng["state"].items()}
        r.rng.bit_generator.state = rng
        return r


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    st = rng.bit_generator.state
    # PCG64's state and increment are 128-bit integers: kept as decimal strings (JSON numbers stop at 64 bits).
    return {"bit_generator": st["bit_generator"], "state": {k: str(v) for k, v in st["state"].items()},
            "has_uint32": st["has_uint32"], "uinteger": st["uinteger"]}

