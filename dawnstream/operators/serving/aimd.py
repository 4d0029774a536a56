"""AIMD batch sizing under a latency SLO (Clipper, Crankshaw et al., NSDI'17, section 4.3.1).

Each model container has its own maximum batch size. A full batch answered within the SLO raises it
by ``step`` (additive increase); a batch over the SLO cuts it by ``backoff`` (multiplicative
decrease, 10% in Clipper). So the size tracks the largest batch the model can answer within the SLO
on this machine, however that changes, instead of a knob frozen at deploy time.

>>> a = AIMDBatcher(slo_ms=20.0, step=4)
>>> a.observe(rows=1, latency_ms=1.0); a.size
5
>>> a.observe(rows=5, latency_ms=30.0); a.size
4
"""

from __future__ import annotations


class AIMDBatcher:
    """Largest batch (rows) to give one model, adapted from the latency of each batch.

    Args:
        slo_ms: latency objective of one batch, ms.
        start: first size. step: rows added after a full batch within the SLO.
        backoff: fraction removed after a batch over the SLO. max_size: upper bound (rows).
    """

    def __init__(self, slo_ms: float, start: int = 1, step: int = 4, backoff: float = 0.1,
                 max_size: int = 4096) -> None:
        self.slo_ms = float(slo_ms)
        self.size = max(1, int(start))
        self.step = int(step)
        self.backoff = float(backoff)
        self.max_size = int(max_size)

    def observe(self, rows: int, latency_ms: float) -> None:
        """Account one batch of ``rows`` rows that took ``latency_ms``."""
        if latency_ms > self.slo_ms:
            self.size = max(1, min(self.size, int(self.size * (1.0 - self.backoff))))
        elif rows >= self.size:  # only a full batch says the size could grow
            self.size = min(self.max_size, self.size + self.step)
