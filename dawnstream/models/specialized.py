"""Specialized models: NoScope's tiny CNNs on frame thumbnails, trained on the reference model's labels.

NoScope (Kang et al., VLDB'17, section 4) replaces the reference detector, for one camera and one
query, by a small CNN trained on the detector's own labels: 1-3 convolution layers of 16-64 filters
(3x3, ReLU, 2x2 max-pool) and a dense layer of 32-128 units on ~50x50 RGB thumbnails, giving
P(query true | frame). Which architecture is best depends on the camera, so a grid of candidates is
trained and the cost-based optimizer picks one.

- :class:`SpecConfig`: one architecture of the grid.
- :func:`train_grid`: trains every candidate **jointly** - the "pack" primitive: the candidates sit in
  one module and see the same minibatch in one pass, their (independent) losses summed, so the data is
  read, decoded and moved once for the whole grid. The parameters of each candidate get exactly the
  gradients they would get alone, so the result equals training them one by one with the same seed
  (:func:`train_one`), only faster.
- :func:`to_onnx` / :class:`OnnxSpecialized`: the trained model exported to ONNX and run with
  onnxruntime (one thread) in the data path; torch is only needed to train.

torch is imported inside the functions that train: serving a specialized model needs onnxruntime only.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

THUMB = 50
"""Thumbnail side in pixels (NoScope's ~50x50)."""


@dataclass(frozen=True)
class SpecConfig:
    """One candidate: ``convs`` convolution layers of ``filters`` 3x3 filters each, then ``dense`` units."""

    convs: int = 2
    filters: int = 16
    dense: int = 32

    @property
    def name(self) -> str:
        return f"c{self.convs}f{self.filters}d{self.dense}"

    @property
    def macs(self) -> int:
        """Multiply-accumulates per frame of this architecture (3x3 convolutions at full size before each
        2x2 pooling, then the dense layers): a cost that does not depend on the machine or the moment.

        >>> SpecConfig(1, 16, 32).macs == 50 * 50 * 16 * 3 * 9 + 25 * 25 * 16 * 32 + 32
        True
        """
        channels, side, total = 3, THUMB, 0
        for _ in range(self.convs):
            total += side * side * self.filters * channels * 9
            channels, side = self.filters, side // 2
        return total + channels * side * side * self.dense + self.dense


GRID = [SpecConfig(c, f, d) for c in (1, 2) for f in (16, 32) for d in (32, 64)]
"""The default grid (8 candidates)."""


def thumbnails(frames: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """BGR frames -> ``(n, 3, 50, 50)`` float32 in [0, 1], RGB (area averaging)."""
    import cv2

    out = np.empty((len(frames), 3, THUMB, THUMB), np.float32)
    for i, f in enumerate(frames):
        small = cv2.resize(f, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
        out[i] = small[:, :, ::-1].transpose(2, 0, 1) / 255.0
    return out


def _module(cfg: SpecConfig) -> Any:
    import torch
    from torch import nn

    layers: list[Any] = []
    channels, side = 3, THUMB
    for _ in range(cfg.convs):
        layers += [nn.Conv2d(channels, cfg.filters, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        channels, side = cfg.filters, side // 2
    layers += [nn.Flatten(), nn.Linear(channels * side * side, cfg.dense), nn.ReLU(), nn.Linear(cfg.dense, 1)]
    torch.manual_seed(0)
    return nn.Sequential(*layers)


def _init(cfg: SpecConfig, seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    m = _module(cfg)
    torch.manual_seed(seed)  # each candidate's initial weights depend on its seed only, not on its neighbours
    for p in m.parameters():
        if p.dim() > 1:
            torch.nn.init.kaiming_uniform_(p, a=5 ** 0.5)
        else:
            torch.nn.init.zeros_(p)
    return m


def train_grid(X: np.ndarray, y: np.ndarray, configs: list[SpecConfig] | None = None, epochs: int = 8,
               batch: int = 64, lr: float = 1e-3, seed: int = 0) -> tuple[dict[SpecConfig, Any], float]:
    """Train every config jointly (the pack primitive, module docstring) on thumbnails ``X`` ``(n, 3, 50,
    50)`` float32 and labels ``y`` ``(n,)`` {0, 1}; returns ``({config: torch module}, seconds)``.

    Raises:
        ValueError: shapes do not match, or only one class in ``y``.
    """
    configs = list(configs or GRID)
    X, y = np.asarray(X, np.float32), np.asarray(y, np.float32)
    if X.ndim != 4 or X.shape[1:] != (3, THUMB, THUMB) or len(X) != len(y):
        raise ValueError(f"expected (n, 3, {THUMB}, {THUMB}) thumbnails and n labels, got {X.shape} and {y.shape}")
    if len(np.unique(y)) < 2:
        raise ValueError("the labels hold one class only: nothing to learn")
    models = [_init(c, seed + i) for i, c in enumerate(configs)]
    seconds = _fit(models, X, y, epochs, batch, lr, seed)
    return dict(zip(configs, models, strict=True)), seconds


def train_one(X: np.ndarray, y: np.ndarray, config: SpecConfig, epochs: int = 8, batch: int = 64, lr: float = 1e-3,
              seed: int = 0, position: int = 0) -> tuple[Any, float]:
    """One candidate alone, as it sits at ``position`` of a grid: the baseline the pack is measured against."""
    m = _init(config, seed + position)
    return m, _fit([m], np.asarray(X, np.float32), np.asarray(y, np.float32), epochs, batch, lr, seed)


def _fit(models: list[Any], X: np.ndarray, y: np.ndarray, epochs: int, batch: int, lr: float, seed: int) -> float:
    """Adam on each model, every minibatch seen by all of them in one pass (their losses summed: the
    parameters are disjoint, so each gets its own gradient); returns the seconds it took."""
    import torch

    torch.set_num_threads(1)
    opts = [torch.optim.Adam(m.parameters(), lr=lr) for m in models]
    loss = torch.nn.BCEWithLogitsLoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    order = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.from_numpy(order.permutation(len(X)))
        for start in range(0, len(X), batch):
            idx = perm[start:start + batch]
            xb, yb = Xt[idx], yt[idx]
            for o in opts:
                o.zero_grad()
            total = sum(loss(m(xb).squeeze(1), yb) for m in models)
            total.backward()
            for o in opts:
                o.step()
    return time.perf_counter() - t0


def predict_torch(model: Any, X: np.ndarray) -> np.ndarray:
    """P(true) per thumbnail with the torch module, ``(n,)`` float32."""
    import torch

    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(np.asarray(X, np.float32))).squeeze(1)).numpy()


def to_onnx(model: Any) -> bytes:
    """The module as ONNX bytes: input ``thumbs`` ``(n, 3, 50, 50)`` float32, output ``p`` ``(n,)`` = P(true)."""
    import torch

    class WithSigmoid(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            return torch.sigmoid(self.inner(x)).squeeze(1)

    buf = io.BytesIO()
    torch.onnx.export(WithSigmoid(model).eval(), (torch.zeros(1, 3, THUMB, THUMB),), buf,  # type: ignore[arg-type]
                      input_names=["thumbs"],
                      output_names=["p"], dynamic_axes={"thumbs": {0: "n"}, "p": {0: "n"}}, opset_version=17,
                      dynamo=False)
    return buf.getvalue()


class OnnxSpecialized:
    """A specialized model in the data path: onnxruntime, one thread, P(true) per thumbnail.

    Raises:
        ModelError: the bytes are not a loadable ONNX model.
    """

    def __init__(self, onnx_bytes: bytes) -> None:
        from dawnstream.models.artifacts import onnx_session

        self.session = onnx_session(onnx_bytes)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``(n, 3, 50, 50)`` float32 -> ``(n,)`` float32 P(true)."""
        out = self.session.run(["p"], {"thumbs": np.ascontiguousarray(X, np.float32)})[0]
        return np.asarray(out, np.float32).reshape(-1)
