"""Every `dawnstream ...` line of the bash blocks of the README and the docs' pages, run as written on a fresh
broker.

The pages are parsed, not copied: a command added there without a check here fails
`test_every_readme_command_is_checked`, and a command that drifts from the code fails when it runs.
What the test changes, and only that: broker commands get this test's own port (a fresh broker,
not the shared one), every client reaches it through ``DAWNSTREAM_KAFKA_BOOTSTRAP`` (the README's
documented override), and `dawnstream run` gets ``--max-idle`` so it ends once the input is drained.
Files the README names (``data.parquet``, ``sensor10k.csv.gz``, ``sample.csv``) are put in the
working directory first.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from kafkakit import free_port_pair

from dawnstream.broker import cache_root
from dawnstream.sources import flights, weather

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


PORT = free_port_pair(29492)
UI_PORT = free_port_pair(29592)


def dashboard_jobs(url: str, names: set[str], timeout_s: float = 30.0) -> dict[str, dict]:
    """The jobs ``dawnstream ui`` shows, once every one of ``names`` is among them."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                jobs = {j["topology"]: j for j in json.loads(r.read())["jobs"]}
            if names <= set(jobs):
                return jobs
        except OSError as e:
            jobs = {"error": {"workers": [], "why": str(e)}}
        assert time.monotonic() < deadline, f"the dashboard shows {sorted(jobs)}, not all of {sorted(names)}"
        time.sleep(0.5)


# The docs' pages in the order a reader meets their commands (the order they were written in: the broker starts
# first, topics exist before jobs read them), then the README, whose few commands repeat the docs' ones.
PAGES = ["docs/tutorials/macrobase.md", "docs/guide/using.md", "docs/guide/group-by.md", "docs/guide/formats.md",
         "docs/guide/exactly-once.md", "docs/guide/accel.md", "docs/guide/failures.md", "docs/guide/monitor.md",
         "docs/guide/docker.md", "docs/tutorials/serving.md", "docs/tutorials/predict.md",
         "docs/tutorials/labeling.md", "docs/tutorials/video.md", "docs/benchmarks.md", "docs/layout.md",
         "docs/reproducibility.md", "docs/index.md", "docs/quickstart.md", "README.md"]
BASH = re.compile(r"```bash\n(.*?)```", flags=re.S)


def readme_commands() -> list[list[str]]:
    """Each `dawnstream` line of the bash blocks of the README and the docs' pages, split like a shell would,
    comments dropped, the README's lines only where no page has them; ``broker status | logs | stop``
    stands for three commands."""
    out: list[list[str]] = []
    for page in PAGES:
        for block in BASH.findall((ROOT / page).read_text()):
            for line in block.splitlines():
                if not line.startswith("dawnstream "):
                    continue
                words = shlex.split(line, comments=True)
                cmds = [[*words[:2], w] for w in words[2:] if w != "|"] if "|" in words else [words]
                # the README's few commands repeat the docs' ones: those run once; a page may repeat one on purpose
                out.extend(c for c in cmds if page != "README.md" or c not in out)
    return out


def test_every_page_with_commands_is_read() -> None:
    pages = [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
             if any("\ndawnstream " in "\n" + b for b in BASH.findall(p.read_text()))]
    assert {str(p.relative_to(ROOT)) for p in pages} <= set(PAGES), "a page whose commands no test runs"


def key(cmd: list[str]) -> str:
    name = " ".join(cmd[1:3]) if cmd[1] in ("broker", "topics", "accel", "models") else cmd[1]
    return name + " &" if cmd[-1] == "&" else name


CHECKED = {"broker start", "topics create", "replay", "run", "process", "topics describe", "broker status",
           "broker logs", "broker stop", "explain", "detect", "accel plan", "run &", "predict", "models retrain",
           "models list", "models show", "models rollback", "models promote", "models train-end-model",
           "models register", "lfs", "ui &"}


def test_every_readme_command_is_checked() -> None:
    cmds = readme_commands()
    assert len(cmds) >= 12
    assert {key(c) for c in cmds} <= CHECKED, "a README command this test does not run yet"


def test_readme_commands_run_as_written(tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boot = f"127.0.0.1:{PORT}"
    shutil.rmtree(cache_root() / f"broker-{PORT}", ignore_errors=True)  # a fresh broker: no topics, no groups
    monkeypatch.chdir(tmp_path)
    (tmp_path / "topologies").symlink_to(ROOT / "topologies")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    pq.write_table(weather(), tmp_path / "data.parquet")
    shutil.copy(shared_data / "macrobase/legacy/sensor10k.csv.gz", tmp_path)
    shutil.copy(shared_data / "macrobase/lib/sample.csv", tmp_path)
    # The README's `python examples/train_flight_late_model.py flight-late.onnx` (not a dawnstream line)
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "train_flight_late_model.py"), "flight-late.onnx"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "DAWNSTREAM_KAFKA_BOOTSTRAP": boot, "DAWNSTREAM_LOG_LEVEL": "WARNING",
           "DAWNSTREAM_REGISTRY": str(tmp_path / "registry")}
    background: list[subprocess.Popen] = []
    late = pc.sum(pc.greater(flights().column("dep_delay"), 60)).as_py()
    ran: list[str] = []

    def run(cmd: list[str]) -> str:
        args = list(cmd[1:])
        if args[-1] == "&":  # a worker the next commands talk to: started, and stopped at the end
            if args[0] == "ui":
                args[-1:-1] = ["--port", str(UI_PORT)]
            background.append(subprocess.Popen([sys.executable, "-m", "dawnstream", *args[:-1]], env=env))
            ran.append(key(cmd))
            return ""
        if args[0] == "broker":
            args += ["--port", str(PORT)]
        if args[0] == "run":
            args += ["--max-idle", "10"]
        r = subprocess.run([sys.executable, "-m", "dawnstream", *args], capture_output=True, text=True, env=env,
                           timeout=540)
        assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        ran.append(key(cmd))
        return r.stdout

    stop = [c for c in readme_commands() if key(c) == "broker stop"]
    try:
        for cmd in readme_commands():
            if key(cmd) == "broker stop":
                continue  # last, after everything else
            out = run(cmd)
            k = key(cmd)
            if k == "broker start":
                assert out.strip() == boot
            elif k == "replay":
                rows = json.loads(out.strip().splitlines()[-1])["rows"]
                assert rows == {"flights": 336_776, "rotten_tomatoes": 12_808}.get(cmd[2], weather().num_rows)
            elif k == "process":
                assert json.loads(out.strip().splitlines()[-1])["rows_out"] == late
            elif k == "topics describe":
                desc = json.loads(out)
                assert desc["topic"] == cmd[3]
                # every late flight once (the rest of the offsets are transaction markers)
                assert late <= sum(p["messages"] for p in desc["partitions"]) <= late + 10_000
            elif k == "broker status":
                assert json.loads(out)["answers"] is True
            elif k == "broker logs":
                assert " INFO " in out  # lines of the broker log
            elif k == "explain" and "--json" in cmd:
                assert json.loads(out)["explanations"]
            elif k == "detect":
                assert pq.read_table(cmd[cmd.index("--out") + 1]).num_rows == 10_479
            elif k == "lfs":
                doc = json.loads(out.strip().splitlines()[-1])
                assert doc["rows_in"] == 1122 and doc["lfs"] == 12 and doc["label_model"] == "matrix_completion"
            elif k == "accel plan":
                assert "fused" in out
            elif k == "predict" and "--feedback-for" in cmd:
                assert json.loads(out)["sent"] == "feedback"  # to the feedback topic (an unknown id: a dead letter)
            elif k == "predict" and "flight-delay" in cmd[2]:
                reply = json.loads(out)
                assert reply["kind"] == "prediction" and reply["label"] in ("on_time", "late")
                assert "model" in reply["answered"] and 0.0 <= reply["prediction"] <= 1.0
            elif k == "predict":
                reply = json.loads(out)
                assert reply["kind"] == ("feedback" if "rating" in cmd[3] else "prediction")
                assert 1.0 <= reply["prediction"] <= 5.0
            elif k == "models register":
                doc = json.loads(out)
                assert doc["promoted"] == doc["version"] == 1
                assert doc["signature"]["inputs"] == ["X: tensor(float)[None, 4]"]
            elif k == "models retrain":
                assert json.loads(out)["versions"]
            elif k == "models train-end-model":
                doc = json.loads(out)
                assert doc["versions"] and doc["rows"] > 6000 and doc["model"] == "review-sentiment-end-model"
            elif k == "models list":
                assert "movielens-theta" in out and "movielens-svd" in out
            elif k == "models show":
                meta = json.loads(out)
                assert meta["name"] == cmd[3] and len(meta["sha256"]) == 64 and meta["training_data"]["topic"]
            elif k in ("models rollback", "models promote"):
                assert json.loads(out)["promoted"] == (1 if k == "models rollback" else int(cmd[4]))
        # The dashboard started early found the README's workers on its own, by their announcements.
        jobs = dashboard_jobs(f"http://127.0.0.1:{UI_PORT}/api/state", {"review-sentiment", "movie-ratings"})
        assert all(w["up"] for j in jobs.values() for w in j["workers"]), jobs
        for p in background:
            p.terminate()
            assert p.wait(60) == 0
        for cmd in stop:
            assert "stopped" in run(cmd)
    finally:
        for p in background:
            if p.poll() is None:
                p.kill()
        subprocess.run([sys.executable, "-m", "dawnstream", "broker", "stop", "--port", str(PORT)],
                       capture_output=True, env=env, timeout=120)
    assert set(ran) == CHECKED
