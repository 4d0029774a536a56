"""Per-metric transforms applied before scoring.

- ``low``: MacroBase's "low metric" transform ``1 / max(x, 0.1)`` - turns unusually *low* values
  into unusually high ones so MAD/MCD flag them (MacroBase ``LowMetricTransform``).
- ``log``: ``log(max(x, 1e-12))``, for heavy-tailed positive metrics.
- ``none``: identity.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda x: x,
    "low": lambda x: 1.0 / np.maximum(x, 0.1),
    "log": lambda x: np.log(np.maximum(x, 1e-12)),
}


def apply_transform(name: str, x: np.ndarray) -> np.ndarray:
    """Apply transform ``name`` to float64 array ``x`` (NaN stays NaN).

    Raises:
        ValueError: unknown transform name.
    """
    try:
        fn = TRANSFORMS[name]
    except KeyError:
        raise ValueError(f"unknown transform {name!r}; expected one of {sorted(TRANSFORMS)}") from None
    with np.errstate(invalid="ignore", divide="ignore"):
        return fn(x)
