"""Programs used as examples, in tests and in ``benchmarks/accel.py``.

>>> mad_chain().outputs
('med', 'mad', 'z', 'per_cat', 'rm')
"""

from __future__ import annotations

from dawnstream.accel.ir import GroupAggregate, Map, Program, Quantile, Scan, col, param, ref


def mad_chain(outputs: tuple[str, ...] = ("med", "mad", "z", "per_cat", "rm")) -> Program:
    """The MAD chain of the accel issue over float32 ``x`` and int64 ``cat`` in [0, 64): median, MAD =
    median(|x - median|), z = |x - median| / MAD, outliers (z > 3) per category, running mean of x
    (MacroBase's MAD classifier, Bailis et al., SIGMOD 2017, sec. 4)."""
    x = col("x", "float32")
    return Program([
        Quantile("med", x, method="median"),
        Quantile("mad", abs(x - param("med")), method="median"),
        Map("z", abs(x - param("med")) / param("mad")),
        GroupAggregate("per_cat", "count", col("cat", "int64"), None, 64, where=ref("z") > 3.0),
        Scan("rm", "running_mean", x),
    ], {"x": "float32", "cat": "int64"}, outputs=list(outputs))
