"""NoScope's cascade on several queries over one video: the plan-and-watch loop measured per query (issue 31).

Runs :mod:`benchmarks/video.py <video>` (the held-out protocol through the broker) once per query and prints
one table: per query, the reference model, the positive share, the targets, the cascade-phase FN/FP and
agreement, every held-out frame's agreement (alarms and fallbacks included), the reference share, a fixed
stride with that budget, the speedup over the reference on every frame (held-out part, after the restart),
the alarms and the frames wrong before the first, and whether the plan left probation (its bounds met).

Queries: ``--queries FILE`` (a JSON list of ``{"query": {...}, "detector": "ssdlite|hog|onnx:PATH"}``), or
the default six over vtest (regions in different parts of the frame, foot and centre, ``min_count`` 2,
SSDLite and HOG). ``--video`` and ``--topology`` go to every run.

    python benchmarks/video_queries.py [--json] [--bootstrap HOST:PORT] [--video FILE] [--topology FILE]
        [--queries FILE] [--only N] [--frames-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT: list[dict[str, Any]] = [
    {"name": "lawn, foot", "query": None, "detector": "ssdlite"},
    {"name": "left, centre", "query": {"region": [0, 250, 384, 576], "point": "center"}, "detector": "ssdlite"},
    {"name": "right, centre", "query": {"region": [560, 200, 768, 576], "point": "center"}, "detector": "ssdlite"},
    {"name": "middle, foot, 2 people", "query": {"region": [200, 150, 600, 576], "point": "foot", "min_count": 2},
     "detector": "ssdlite"},
    {"name": "lawn, foot", "query": None, "detector": "hog"},
    {"name": "bottom, centre", "query": {"region": [0, 300, 768, 576], "point": "center"}, "detector": "hog"},
]


def run_one(case: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One benchmarks/video.py run; its JSON, or ``{"error": ...}`` when it failed."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "video.py"), "--json", "--no-pack", "--bootstrap", args.bootstrap,
           "--video", args.video, "--topology", str(args.topology), "--detector", case["detector"]]
    if case.get("query") is not None:
        cmd += ["--query", json.dumps(case["query"])]
    if args.frames_dir is not None:
        args.frames_dir.mkdir(parents=True, exist_ok=True)
        cmd += ["--frames", str(args.frames_dir / f"{case['index']}.jsonl")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def row(case: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    """The table's numbers for one query."""
    if "error" in got:
        return {"query": case["name"], "detector": case["detector"], "error": got["error"]}
    c = got["cascade"]
    held, every = c["held_out"], c["held_out_all_phases"]
    plan = c.get("plan") or {}
    return {"query": case["name"], "region": (got.get("query") or {}).get("region"), "detector": case["detector"],
            "positives": got["reference"]["positive_share"], "cascade_frames": held.get("frames", 0),
            "fn": held.get("fn_rate"), "fp": held.get("fp_rate"), "agreement_cascade": held.get("agreement"),
            "agreement_all": every["agreement"], "fn_all": every["fn_rate"], "fp_all": every["fp_rate"],
            "reference_share": every["reference_share"], "stride": every["stride"],
            "stride_agreement": every["stride_agreement"], "speedup": held.get("speedup_after_start"),
            "alarms": every["alarms"], "wrong_before_first_alarm": every["wrong_before_first_alarm"],
            "wrong_after_first_alarm": every["wrong_after_first_alarm"],
            "plan_bounds": [plan.get("fn_errors"), plan.get("positives"), plan.get("fp_errors"), plan.get("negatives")],
            "max_run": plan.get("max_run"), "plan_reference_share": plan.get("reference_share"),
            "by_stage": held.get("by_stage"), "sampled": every.get("sampled")}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown, one line per query."""
    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    lines = ["| query (reference) | positives | cascade frames | FN / FP (cascade) | agreement (cascade / all) "
             "| ref share | stride (1/k): agreement | speedup | alarms (wrong before) |", "|" + "---|" * 9]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['query']} ({r['detector']}) | failed: {r['error']} |" + " |" * 7)
            continue
        lines.append(f"| {r['query']} ({r['detector']}) | {pct(r['positives'])} | {r['cascade_frames']} "
                     f"| {pct(r['fn'])} / {pct(r['fp'])} | {pct(r['agreement_cascade'])} / {pct(r['agreement_all'])} "
                     f"| {pct(r['reference_share'])} | 1/{r['stride']}: {pct(r['stride_agreement'])} "
                     f"| {r['speedup'] if r['speedup'] is not None else '-'}x "
                     f"| {r['alarms']} ({r['wrong_before_first_alarm'] if r['alarms'] else '-'}) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object (rows + markdown table)")
    ap.add_argument("--bootstrap", default=os.environ.get("DAWNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--video", default="vtest")
    ap.add_argument("--topology", type=Path, default=ROOT / "topologies" / "camera-lawn.yaml")
    ap.add_argument("--queries", type=Path, help="JSON list of {name, query, detector}")
    ap.add_argument("--only", type=int, action="append", help="run only the N-th query (0-based; repeatable)")
    ap.add_argument("--frames-dir", type=Path,
                    help="write each query's labelled frames to DIR/N.jsonl (video.py --frames)")
    args = ap.parse_args()
    cases = json.loads(args.queries.read_text()) if args.queries else DEFAULT
    picked = [{**cases[i], "index": i} for i in (args.only or range(len(cases)))]
    rows = []
    for case in picked:
        rows.append(row(case, run_one(case, args)))
        print(f"# {case['name']} ({case['detector']}): {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    md = table(rows)
    print(json.dumps({"video": args.video, "rows": rows, "table": md}) if args.json else md)


if __name__ == "__main__":
    main()
