"""`make demo-video`'s code path, on a part of vtest given as a file (as a user gives their camera's recording)
and a quicker cascade: replayed through the broker, labelled by the worker process, every
frame exactly once and in order, the cascade phase reached, and the comparison with the reference model on
every frame made. The demo's argument checks need no broker."""

from __future__ import annotations

from pathlib import Path

import yaml
from rich.console import Console

from dawnstream.demo_video import TOPOLOGY, main, run_video_demo
from dawnstream.video_source import vtest

FRAMES = 120
START = 0  # a start frame is covered by tests/faults/test_cascade_kill9.py's replay


def test_the_video_demo_labels_every_frame_once_in_order_and_reaches_the_cascade(tmp_path: Path, kafka_bootstrap,
                                                                                 monkeypatch) -> None:
    doc = yaml.safe_load(TOPOLOGY.read_text())
    doc["name"] = "camera-lawn-test"
    doc["input"]["topic"] = "cameras.lawn-test.frames.v1"
    doc["outputs"][0]["topic"] = "cameras.lawn-test.labels.v1"
    doc["metrics"]["port"] = 29471
    doc["stages"][0].update({"query": {"min_count": 3}, "bootstrap": 30, "block": 5, "min_per_class": 2,
                             "swap_after": 5, "epochs": 2, "grid": [{"convs": 1, "filters": 16, "dense": 32}]})
    topo = tmp_path / "camera-lawn-test.yaml"
    topo.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("DAWNSTREAM_KAFKA_BOOTSTRAP", kafka_bootstrap)
    result = run_video_demo(Console(file=open(tmp_path / "out.txt", "w")), topology=topo, limit=START + FRAMES,
                            rate=None, video=str(vtest()), start=START)
    assert result.error is None
    assert result.labelled == result.frames == FRAMES and result.in_order
    assert result.by_phase["cascade"] > 0 and result.versions == [1]
    assert sum(result.by_stage.values()) == FRAMES
    assert result.overall["frames"] == FRAMES and 0 <= result.overall["fn_rate"] <= 1
    assert result.cascade["reference_share"] < 1.0  # the cascade answered some frames without the reference


def test_the_video_demo_refuses_bad_arguments_before_it_starts_anything(capsys, monkeypatch) -> None:
    monkeypatch.setenv("DAWNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing there: nothing may be asked of it
    for argv in (["--start", "9", "--limit", "9"], ["--start", "-1"]):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 2
        else:
            raise AssertionError(f"{argv} was taken")
    assert main(["--video", "/nonexistent/gate.mp4"]) == 1
    assert "no such file" in capsys.readouterr().out
