"""Specialized models: packed grid training equals training each alone, they learn, ONNX reproduces torch."""

from __future__ import annotations

import numpy as np
import pytest

from dawnstream.models.specialized import (
    OnnxSpecialized,
    SpecConfig,
    predict_torch,
    thumbnails,
    to_onnx,
    train_grid,
    train_one,
)

pytest.importorskip("torch")
CONFIGS = [SpecConfig(1, 16, 32), SpecConfig(2, 16, 32), SpecConfig(2, 32, 64)]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 300
    X = rng.random((n, 3, 50, 50)).astype(np.float32) * 0.5
    y = (rng.random(n) < 0.4).astype(np.float32)
    X[y == 1, :, 10:25, 10:25] += 0.5  # the "object": a bright square
    return X, y


@pytest.fixture(scope="module")
def packed(data):  # noqa: ANN001, ANN201
    return train_grid(*data, CONFIGS, epochs=8)[0]


def test_packed_training_equals_training_each_candidate_alone(data, packed) -> None:
    X, y = data
    for position, cfg in enumerate(CONFIGS):
        alone, _ = train_one(X, y, cfg, epochs=8, position=position)
        assert np.allclose(predict_torch(packed[cfg], X), predict_torch(alone, X), atol=1e-6), cfg.name


def test_the_candidates_learn_the_pattern(data, packed) -> None:
    X, y = data
    for cfg, model in packed.items():
        assert ((predict_torch(model, X) > 0.5) == y).mean() > 0.9, cfg.name


def test_onnx_reproduces_torch(data, packed) -> None:
    X, _ = data
    model = packed[CONFIGS[1]]
    onnx = OnnxSpecialized(to_onnx(model))
    assert np.abs(onnx.predict(X) - predict_torch(model, X)).max() < 1e-5


def test_thumbnails_and_bad_inputs() -> None:
    frames = [np.full((576, 768, 3), (10, 20, 30), np.uint8)]
    t = thumbnails(frames)
    assert t.shape == (1, 3, 50, 50) and np.allclose(t[0, :, 0, 0], [30 / 255, 20 / 255, 10 / 255])  # BGR -> RGB
    with pytest.raises(ValueError, match="one class"):
        train_grid(np.zeros((4, 3, 50, 50), np.float32), np.zeros(4), CONFIGS[:1], epochs=1)
    with pytest.raises(ValueError, match="expected"):
        train_grid(np.zeros((4, 3, 32, 32), np.float32), np.array([0, 1, 0, 1]), CONFIGS[:1], epochs=1)
