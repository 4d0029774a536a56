"""``benchmarks/video.py``'s flags (which stage it measures, with what detector and query) and
``benchmarks/video_queries.py``'s table, without the broker: the runs themselves take minutes per query."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


video, queries = load("video"), load("video_queries")
LAWN = yaml.safe_load((ROOT / "topologies" / "camera-lawn.yaml").read_text())


def test_the_measured_stage_is_the_topologys_with_the_flags_applied() -> None:
    stage = video.measured_stage(LAWN, None, None, 540, "/tmp/r")
    topo = LAWN["stages"][0]
    assert stage["query"] == topo["query"] and stage["detector"] == topo["detector"]
    assert stage["difference"]["roi"] == topo["difference"]["roi"]  # the topology's own query keeps its roi
    assert (stage["bootstrap"], stage["max_bootstrap"], stage["swap_after"], stage["registry"]) == (540, 570, 0,
                                                                                                   "/tmp/r")
    q = {"region": [560, 200, 768, 576], "point": "center"}
    stage = video.measured_stage(LAWN, "onnx:/models/yolo.onnx", q, 300, "/tmp/r")
    assert stage["detector"] == {"kind": "onnx", "path": "/models/yolo.onnx"} and stage["query"] == q
    assert "roi" not in stage["difference"]  # drawn around the lawn: the new query's region counts instead
    assert LAWN["stages"][0]["difference"]["roi"] == topo["difference"]["roi"]  # the topology is not changed
    assert video.measured_stage(LAWN, "hog", None, 300, "/tmp/r")["detector"] == {"kind": "hog"}
    with pytest.raises(ValueError, match="no cascade stage"):
        video.measured_stage({"stages": [{"op": "detect"}]}, None, None, 300, "/tmp/r")


def test_a_video_too_short_for_the_protocol_is_refused_with_its_length(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    path = tmp_path / "short.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(20):
        out.write(np.full((48, 64, 3), i * 10, np.uint8))
    out.release()
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "video.py"), "--video", str(path), "--bootstrap",
                        "127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "20 frames; the held-out protocol needs at least 180" in r.stderr


def result(fn: float, agreement: float, alarms: int) -> dict[str, Any]:
    held = {"frames": 200, "agreement": agreement, "fn_rate": fn, "fp_rate": 0.0, "reference_share": 0.4,
            "stride": 2, "stride_agreement": 0.97, "speedup_after_start": 1.8}
    return {"query": {"region": [0, 0, 10, 10]}, "reference": {"positive_share": 0.25},
            "cascade": {"held_out": held, "plan": {"fn_errors": 0, "positives": 36, "fp_errors": 1, "negatives": 144,
                                                   "max_run": 26},
                        "held_out_all_phases": {**held, "alarms": alarms,
                                                "wrong_before_first_alarm": 3 if alarms else None,
                                                "wrong_after_first_alarm": 0 if alarms else None}}}


def test_the_queries_table_has_one_line_per_query_with_its_numbers() -> None:
    cases = [{"name": "lawn", "detector": "ssdlite"}, {"name": "left", "detector": "hog"},
             {"name": "broken", "detector": "onnx:x"}]
    rows = [queries.row(cases[0], result(0.0, 0.996, 0)), queries.row(cases[1], result(0.04, 0.97, 1)),
            queries.row(cases[2], {"error": ["boom"]})]
    assert rows[0]["plan_bounds"] == [0, 36, 1, 144] and rows[0]["max_run"] == 26
    lines = queries.table(rows).splitlines()
    assert len(lines) == 2 + 3
    assert lines[2] == ("| lawn (ssdlite) | 25.0% | 200 | 0.0% / 0.0% | 99.6% / 99.6% | 40.0% | 1/2: 97.0% | 1.8x "
                        "| 0 (-) |")
    assert lines[3].endswith("| 1 (3) |") and "failed: ['boom']" in lines[4]
    assert json.dumps(rows)  # the --json output is plain JSON
    assert len(queries.DEFAULT) >= 6 and {c["detector"] for c in queries.DEFAULT} == {"ssdlite", "hog"}


def test_each_query_runs_video_py_with_its_flags_and_its_own_frames_file(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout='{"ok": 1}\n', stderr="")

    monkeypatch.setattr(queries.subprocess, "run", fake_run)
    args = argparse.Namespace(bootstrap="h:1", video="cam.mp4", topology=Path("t.yaml"), frames_dir=tmp_path / "f")
    case = {"name": "right", "query": {"region": [1, 2, 3, 4]}, "detector": "hog", "index": 2}
    assert queries.run_one(case, args) == {"ok": 1}
    cmd = seen[0]
    flag = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
    assert (flag["--video"], flag["--topology"], flag["--detector"], flag["--bootstrap"]) == ("cam.mp4", "t.yaml",
                                                                                              "hog", "h:1")
    assert json.loads(flag["--query"]) == case["query"] and flag["--frames"] == str(tmp_path / "f" / "2.jsonl")
    assert (tmp_path / "f").is_dir()
    queries.run_one({**case, "query": None}, argparse.Namespace(**{**vars(args), "frames_dir": None}))
    assert "--query" not in seen[1] and "--frames" not in seen[1]
