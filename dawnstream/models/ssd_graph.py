"""The text graph OpenCV DNN needs to run a TensorFlow Object Detection API SSD graph.

``cv2.dnn.readNetFromTensorflow`` cannot import an SSD frozen graph alone: its pre- and post-processing
(``Preprocessor/map``, the anchor generator, the non-maximum suppression) are TensorFlow control flow.
OpenCV's DNN documentation ("TensorFlow Object Detection API", the SSD section) describes the text graph
that replaces them: keep the feature extractor and the box predictors, flatten and concatenate each
layer's class and box predictions, generate the anchors with OpenCV ``PriorBox`` layers (the scales and
aspect ratios of the model's ``ssd_anchor_generator`` config, Liu et al. ECCV'16 section 2.2) and decode
them with a ``DetectionOutput`` layer (box coder variances, NMS IoU, score threshold). OpenCV then reads
the structure from that text and the weights from the frozen graph.

:func:`write_ssd_text_graph` builds it from the frozen graph (through ``cv2.dnn.writeTextGraph``) and an
:class:`SSDConfig` (the numbers of the model's ``pipeline.config``); it needs no TensorFlow. The text is
protobuf text format, handled by the small reader/writer below (:func:`parse_text`, :func:`format_text`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEEP_OPS = {"Conv2D", "BiasAdd", "Add", "AddV2", "Relu", "Relu6", "Placeholder", "FusedBatchNorm",
            "FusedBatchNormV3", "DepthwiseConv2dNative", "ConcatV2", "Mul", "MaxPool", "AvgPool", "Identity",
            "Sub", "ResizeNearestNeighbor", "Pad", "Mean"}
DROP_PREFIXES = ("MultipleGridAnchorGenerator/", "Concatenate/", "Postprocessor/", "Preprocessor/map")


@dataclass(frozen=True)
class SSDConfig:
    """The numbers of an SSD ``pipeline.config`` that the text graph needs (defaults: SSDLite-MobileNetV2
    as trained by the TF Object Detection API, one class)."""

    num_classes: int = 1
    min_scale: float = 0.2
    max_scale: float = 0.95
    num_layers: int = 6
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 0.3333)
    reduce_boxes_in_lowest_layer: bool = True
    image_size: tuple[int, int] = (300, 300)
    scales_xywh: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    """faster_rcnn_box_coder x_scale, y_scale, width_scale, height_scale."""
    iou_threshold: float = 0.6
    score_threshold: float = 1e-8
    max_per_class: int = 100
    max_total: int = 100
    extra: dict[str, Any] = field(default_factory=dict)


# -- protobuf text format: a message is a list of (key, value); a value is a raw token or a message ----
Message = list[tuple[str, Any]]
_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|([{}:])|([^\s{}:"]+))')


def parse_text(text: str) -> Message:
    """Protobuf text format -> nested ``[(key, raw token | Message)]`` (order and repeats kept).

    Raises:
        ValueError: unbalanced braces or a key without a value.
    """
    stack: list[Message] = [[]]
    pos, key = 0, None
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip():
                raise ValueError(f"cannot read the text graph at offset {pos}")
            break
        pos = m.end()
        tok = m.group(1) or m.group(2) or m.group(3)
        if tok == ":":
            continue
        if tok == "{":
            if key is None:
                raise ValueError(f"a message without a key at offset {pos}")
            child: Message = []
            stack[-1].append((key, child))
            stack.append(child)
            key = None
        elif tok == "}":
            if len(stack) == 1:
                raise ValueError(f"an unbalanced '}}' at offset {pos}")
            stack.pop()
        elif key is None:
            key = tok
        else:
            stack[-1].append((key, tok))
            key = None
    if len(stack) != 1:
        raise ValueError("unbalanced braces in the text graph")
    return stack[0]


def format_text(msg: Message, indent: int = 0) -> str:
    """The inverse of :func:`parse_text`."""
    pad, out = "  " * indent, []
    for k, v in msg:
        if isinstance(v, list):
            out.append(f"{pad}{k} {{\n{format_text(v, indent + 1)}{pad}}}\n")
        else:
            out.append(f"{pad}{k}: {v}\n")
    return "".join(out)


def _get(msg: Message, key: str) -> Any:
    return next((v for k, v in msg if k == key), None)


def _name(node: Message) -> str:
    return str(_get(node, "name")).strip('"')


def _inputs(node: Message) -> list[str]:
    return [str(v).strip('"') for k, v in node if k == "input"]


def _set_inputs(node: Message, inputs: list[str]) -> None:
    rest = [(k, v) for k, v in node if k != "input"]
    head = [(k, v) for k, v in rest if k in ("name", "op")]
    tail = [(k, v) for k, v in rest if k not in ("name", "op")]
    node[:] = head + [("input", f'"{i}"') for i in inputs] + tail


def _attr_value(value: Any) -> Message:
    if isinstance(value, bool):
        return [("b", "true" if value else "false")]
    if isinstance(value, int):
        return [("i", str(value))]
    if isinstance(value, float):
        return [("f", repr(value))]
    if isinstance(value, str):
        return [("s", f'"{value}"')]
    # OpenCV reads list attributes as tensors
    tensor: Message = [("dtype", "DT_FLOAT"), ("tensor_shape", [("dim", [("size", str(len(value)))])])]
    return [("tensor", tensor + [("float_val", repr(float(v))) for v in value])]


def _node(name: str, op: str, inputs: list[str], **attrs: Any) -> Message:
    node: Message = [("name", f'"{name}"'), ("op", f'"{op}"')] + [("input", f'"{i}"') for i in inputs]
    for k, v in attrs.items():
        node.append(("attr", [("key", f'"{k}"'), ("value", _attr_value(v))]))
    return node


def _int_const(name: str, values: list[int]) -> Message:
    shape: Message = [("dim", [("size", str(len(values)))])] if len(values) > 1 else []
    tensor: Message = [("dtype", "DT_INT32"), ("tensor_shape", shape)] + [("int_val", str(v)) for v in values]
    return [("name", f'"{name}"'), ("op", '"Const"'),
            ("attr", [("key", '"dtype"'), ("value", [("type", "DT_INT32")])]),
            ("attr", [("key", '"value"'), ("value", [("tensor", tensor)])])]


def ssd_text_graph(graph_text: str, cfg: SSDConfig) -> str:
    """The OpenCV text graph (module docstring) from the full text dump of an SSD frozen graph.

    Raises:
        ValueError: the graph is not a TF Object Detection API SSD graph with ``cfg.num_layers``
            convolutional box predictors and one ``Placeholder`` input.
    """
    nodes = [v for k, v in parse_text(graph_text) if k == "node"]
    ops = {_name(n): str(_get(n, "op")).strip('"') for n in nodes}
    # Identity nodes are pass-throughs: point their consumers at their input
    alias = {_name(n): _inputs(n)[0] for n in nodes if ops[_name(n)] == "Identity" and _inputs(n)}

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    kept = [n for n in nodes if ops[_name(n)] in KEEP_OPS and ops[_name(n)] != "Identity"
            and not _name(n).startswith(DROP_PREFIXES)]
    placeholders = [n for n in kept if ops[_name(n)] == "Placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"expected one Placeholder input, found {len(placeholders)}")
    image = _name(placeholders[0])
    kept_names = {_name(n) for n in kept}
    for n in kept:
        fixed = []
        for inp in _inputs(n):
            src = resolve(inp)
            # an input from the dropped preprocessing map is the image itself (OpenCV feeds it raw)
            if src not in kept_names and ops.get(src.split(":")[0]) not in (None, "Const"):
                src = image
            fixed.append(src)
        _set_inputs(n, fixed)
    h, w = cfg.image_size
    dims: Message = [("dim", [("size", str(v))]) for v in (-1, h, w, 3)]
    placeholders[0][:] = [(k, v) for k, v in placeholders[0] if k != "attr"] + [
        ("attr", [("key", '"dtype"'), ("value", [("type", "DT_UINT8")])]),
        ("attr", [("key", '"shape"'), ("value", [("shape", dims)])])]
    kept.sort(key=lambda n: _name(n) != image)

    L = cfg.num_layers
    for n in kept:
        if re.fullmatch(r"BoxPredictor_\d+/BoxEncodingPredictor/Conv2D", _name(n)):
            n.append(("attr", [("key", '"loc_pred_transposed"'), ("value", _attr_value(True))]))
    heads = [f"BoxPredictor_{i}/{p}/BiasAdd" for i in range(L) for p in ("ClassPredictor", "BoxEncodingPredictor")]
    missing = [hd for hd in heads if hd not in kept_names]
    if missing:
        raise ValueError(f"not an SSD graph with {L} convolutional box predictors: no {missing[0]}")
    kept.append(_int_const("concat/axis_flatten", [-1]))
    for label in ("ClassPredictor", "BoxEncodingPredictor"):
        flats = []
        for i in range(L):
            src = f"BoxPredictor_{i}/{label}/BiasAdd"
            kept.append(_node(src + "/Flatten", "Flatten", [src]))
            flats.append(src + "/Flatten")
        kept.append(_node(f"{label}/concat", "ConcatV2", flats + ["concat/axis_flatten"]))

    scales = [cfg.min_scale + (cfg.max_scale - cfg.min_scale) * i / (L - 1) for i in range(L)] + [1.0]
    xs, ys, ws, hs = cfg.scales_xywh
    priors = []
    for i in range(L):
        if i == 0 and cfg.reduce_boxes_in_lowest_layer:
            widths = [0.1, cfg.min_scale * math.sqrt(2.0), cfg.min_scale * math.sqrt(0.5)]
            heights = [0.1, cfg.min_scale / math.sqrt(2.0), cfg.min_scale / math.sqrt(0.5)]
        else:
            widths = [scales[i] * math.sqrt(a) for a in cfg.aspect_ratios] + [math.sqrt(scales[i] * scales[i + 1])]
            heights = [scales[i] / math.sqrt(a) for a in cfg.aspect_ratios] + [math.sqrt(scales[i] * scales[i + 1])]
        # PriorBox takes sizes in input pixels
        kept.append(_node(f"PriorBox_{i}", "PriorBox", [f"BoxPredictor_{i}/BoxEncodingPredictor/BiasAdd", image],
                          flip=False, clip=False, width=[v * w for v in widths], height=[v * h for v in heights],
                          variance=[1.0 / xs, 1.0 / ys, 1.0 / ws, 1.0 / hs]))
        priors.append(f"PriorBox_{i}")
    kept.append(_node("PriorBox/concat", "ConcatV2", priors + ["concat/axis_flatten"]))
    kept.append(_int_const("ClassPredictor/concat3d/shape", [0, -1, cfg.num_classes + 1]))
    kept.append(_node("ClassPredictor/concat3d", "Reshape", ["ClassPredictor/concat", "ClassPredictor/concat3d/shape"]))
    kept.append(_node("ClassPredictor/concat/sigmoid", "Sigmoid", ["ClassPredictor/concat3d"]))
    kept.append(_node("ClassPredictor/concat/sigmoid/Flatten", "Flatten", ["ClassPredictor/concat/sigmoid"]))
    kept.append(_node("detection_out", "DetectionOutput",
                      ["BoxEncodingPredictor/concat", "ClassPredictor/concat/sigmoid/Flatten", "PriorBox/concat"],
                      num_classes=cfg.num_classes + 1, share_location=True, background_label_id=0,
                      nms_threshold=float(cfg.iou_threshold), confidence_threshold=float(cfg.score_threshold),
                      top_k=int(cfg.max_per_class), keep_top_k=int(cfg.max_total), code_type="CENTER_SIZE"))
    # drop what feeds nothing (the graph's other outputs), until only detection_out is a sink
    while True:
        used = {inp.split(":")[0] for n in kept for inp in _inputs(n)}
        sinks = [n for n in kept if _name(n) not in used and _name(n) != "detection_out"]
        if not sinks:
            break
        kept = [n for n in kept if n not in sinks]
    return format_text([("node", n) for n in kept])


def write_ssd_text_graph(frozen_pb: str | Path, out: str | Path, cfg: SSDConfig | None = None) -> Path:
    """Write the OpenCV text graph for ``frozen_pb`` to ``out`` (through a full text dump made by
    ``cv2.dnn.writeTextGraph``) and check that OpenCV loads the pair.

    Raises:
        ValueError: not an SSD graph (:func:`ssd_text_graph`), or OpenCV cannot load the result.
    """
    import cv2

    out = Path(out)
    dump = out.with_suffix(".full.pbtxt")
    cv2.dnn.writeTextGraph(str(frozen_pb), str(dump))
    try:
        out.write_text(ssd_text_graph(dump.read_text(), cfg or SSDConfig()))
    finally:
        dump.unlink(missing_ok=True)
    try:
        cv2.dnn.readNetFromTensorflow(str(frozen_pb), str(out))
    except cv2.error as e:
        raise ValueError(f"OpenCV cannot load {frozen_pb} with the generated {out}: {e}") from None
    return out
