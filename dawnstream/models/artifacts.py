"""Artifact bytes for the registry: numpy ``.npz`` without pickle, and ONNX graphs checked on load."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from dawnstream.models.registry import ModelError


def to_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """``np.savez`` of plain-dtype arrays to bytes (object arrays are refused: they would need pickle).

    >>> from_npz(to_npz({"a": np.arange(3)}))["a"].tolist()
    [0, 1, 2]

    Raises:
        ModelError: an array of dtype object.
    """
    for k, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise ModelError(f"array {k!r} has dtype object; artifacts hold plain numbers and strings only")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    return buf.getvalue()


def from_npz(data: bytes) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` (``allow_pickle=False``: an artifact that needs pickle is rejected).

    Raises:
        ModelError: not an npz file, or it holds pickled objects.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise ModelError(f"not a plain .npz artifact: {e}") from None


def onnx_session(data: bytes, threads: int = 1) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``data`` (CPU; ``threads`` intra-op threads).

    onnxruntime is imported here, so only stages that serve ONNX models pay for it.

    Raises:
        ModelError: onnxruntime is missing or refuses the graph.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError("serving ONNX models needs onnxruntime: pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad graphs
        raise ModelError(f"onnxruntime cannot load the graph: {e}") from None
