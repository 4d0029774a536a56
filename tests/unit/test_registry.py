"""Model registry: versions, promotion, rollback, integrity, no pickle."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dawnstream.models.artifacts import from_npz, to_npz
from dawnstream.models.registry import ModelError, Registry


def test_versions_metadata_and_promotion(tmp_path):
    reg = Registry(tmp_path)
    v1 = reg.register("theta", b"one", "npz", training_data={"topic": "t", "offsets": {"0": [0, 9]}},
                      metrics={"rmse": 1.0}, params={"k": 20})
    v2 = reg.register("theta", b"two", "npz", parent=v1.version, metrics={"rmse": 0.9})
    assert (v1.version, v2.version) == (1, 2)
    assert reg.promoted("theta") is None
    assert reg.get("theta").version == 2  # nothing promoted: the latest
    reg.promote("theta", 1)
    assert reg.get("theta").version == 1
    got = reg.get("theta", 2)
    assert got.parent == 1 and got.metrics == {"rmse": 0.9} and got.read_bytes() == b"two"
    assert reg.get("theta", 1).training_data == {"topic": "t", "offsets": {"0": [0, 9]}}
    reg.promote("theta", 2)
    assert reg.promoted_version("theta") == 2
    assert reg.rollback("theta").version == 1
    with pytest.raises(ModelError, match="nothing to roll back"):
        reg.rollback("theta")
    assert reg.names() == ["theta"]


def test_errors_name_what_exists(tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(ModelError, match="no model named 'x'"):
        reg.get("x")
    reg.register("m", b"a", "onnx")
    with pytest.raises(ModelError, match=r"no version 7 .*versions: \[1\]"):
        reg.get("m", 7)
    with pytest.raises(ModelError, match="never pickle"):
        reg.register("m", b"a", "pkl")
    with pytest.raises(ModelError, match="model name"):
        reg.register("../escape", b"a", "npz")


def test_tampered_artifact_is_refused(tmp_path):
    reg = Registry(tmp_path)
    mv = reg.register("m", b"weights", "npz")
    assert mv.path is not None
    mv.path.write_bytes(b"other weights")
    with pytest.raises(ModelError, match="sha256"):
        reg.get("m", 1).read_bytes()


def test_concurrent_registrations_get_distinct_versions(tmp_path):
    reg = Registry(tmp_path)
    got: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        v = reg.register("m", bytes([i]) * 10, "npz").version
        with lock:
            got.append(v)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 9))
    assert sorted(reg.get("m", v).read_bytes()[0] for v in got) == list(range(8))


def test_npz_refuses_pickled_objects():
    with pytest.raises(ModelError, match="dtype object"):
        to_npz({"a": np.array([{"x": 1}], dtype=object)})
    import io

    buf = io.BytesIO()
    np.savez(buf, a=np.array([{"x": 1}], dtype=object))  # what a hostile artifact would carry
    with pytest.raises(ModelError, match="not a plain .npz"):
        from_npz(buf.getvalue())
