"""Operator registry: the ``op`` names a topology config may use, and how stages are built."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dawnstream.errors import ConfigError
from dawnstream.operators.base import Chain, Operator
from dawnstream.operators.derive import Derive
from dawnstream.operators.filter import Filter
from dawnstream.operators.group_by import GroupBy
from dawnstream.operators.labeling.label import Label
from dawnstream.operators.outliers.classify import OutlierClassifier
from dawnstream.operators.outliers.explain import MergeExplanations, StreamingExplainer
from dawnstream.operators.select import Select
from dawnstream.operators.serving.forward_feedback import ForwardFeedback
from dawnstream.operators.serving.predict import Predict
from dawnstream.operators.serving.serve import Serve
from dawnstream.operators.video.cascade import Cascade
from dawnstream.operators.video.detect import Detect
from dawnstream.operators.video.difference import DifferenceDetector
from dawnstream.operators.window_count import WindowCount

OPERATORS: dict[str, type[Operator]] = {
    Filter.kind: Filter,
    Derive.kind: Derive,
    Select.kind: Select,
    GroupBy.kind: GroupBy,
    WindowCount.kind: WindowCount,
    OutlierClassifier.kind: OutlierClassifier,
    StreamingExplainer.kind: StreamingExplainer,
    MergeExplanations.kind: MergeExplanations,
    Serve.kind: Serve,
    Label.kind: Label,
    DifferenceDetector.kind: DifferenceDetector,
    Cascade.kind: Cascade,
    Detect.kind: Detect,
    Predict.kind: Predict,
    ForwardFeedback.kind: ForwardFeedback,
}


def register(cls: type[Operator]) -> type[Operator]:
    """Class decorator adding an operator kind to :data:`OPERATORS`."""
    OPERATORS[cls.kind] = cls
    return cls


def build_operator(op: str, params: Mapping[str, Any], name: str | None, path: str) -> Operator:
    """Instantiate one stage.

    Raises:
        ConfigError: unknown ``op``, unknown/missing parameter, or a bad parameter value, with the
            key path (``stages.2.expr``) and what was expected.
    """
    cls = OPERATORS.get(op)
    if cls is None:
        raise ConfigError(f"{path}.op", f"unknown operator {op!r}; expected one of {sorted(OPERATORS)}")
    import inspect

    sig = inspect.signature(cls.__init__)
    accepted = {p for p in sig.parameters if p not in ("self",) and not p.startswith("_")}
    unknown = set(params) - accepted
    if unknown:
        raise ConfigError(
            f"{path}.{sorted(unknown)[0]}",
            f"unknown parameter for {op!r}; accepted: {sorted(accepted - {'name'})}",
        )
    missing = [
        p
        for p, spec in sig.parameters.items()
        if p in accepted and p != "name" and spec.default is inspect.Parameter.empty and p not in params
    ]
    if missing:
        raise ConfigError(f"{path}.{missing[0]}", f"required parameter of {op!r} is missing")
    kwargs = dict(params)
    if "_path" in sig.parameters:
        first = next(iter(params), "")
        kwargs["_path"] = f"{path}.{first}" if first else path
    try:
        return cls(name=name, **kwargs)
    except ConfigError as e:
        raise ConfigError(f"{path}.{e.path}" if e.path and not e.path.startswith(path) else e.path or path,
                          e.message) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(path, f"bad parameters for {op!r}: {e}") from None


def build_chain(stages: Sequence[tuple[str, Mapping[str, Any], str | None]], path: str = "stages",
                accel: str = "off") -> Chain:
    """Build a :class:`Chain` from ``[(op, params, name), ...]``; stage names default to ``<op>`` or
    ``<op>_<index>`` when an op repeats.

    ``accel`` (``off``/``cpu``/``gpu``/``auto``): with anything but ``off``, adjacent
    filter/derive/select stages are fused into one compiled pass (:mod:`dawnstream.operators.fused`)
    and operators with an ``accel`` attribute (the outlier classifiers) use compiled kernels."""
    from dawnstream.operators.fused import fuse

    ops: list[Operator] = []
    kinds = [s[0] for s in stages]
    for i, (op, params, name) in enumerate(stages):
        default = op if kinds.count(op) == 1 else f"{op}_{i}"
        built = build_operator(op, params, name or default, f"{path}.{i}")
        if hasattr(built, "accel"):
            built.accel = accel
        ops.append(built)
    return Chain(fuse(ops, accel))
