"""Supervision of `dawnstream run --workers N`: a worker killed by a signal is replaced (its partitions
move to the others meanwhile), and the job still ends cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import yaml
from faultkit import wait_until, worker_pids


def write(tmp_path: Path, doc: dict) -> Path:
    p = tmp_path / f"{doc['name']}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def topology(tag: str, bootstrap: str) -> dict:
    return {"name": f"sup-{tag}", "input": {"topic": f"test.sup-{tag}.rows.v1", "partitions": 2},
            "output": {"topic": f"test.sup-{tag}.out.v1"}, "kafka": {"bootstrap": bootstrap},
            "metrics": {"port": 0}}


def test_a_killed_worker_is_replaced_and_the_job_ends_cleanly(kafka_bootstrap: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    log = tmp_path / "run.log"
    doc = topology(tag, kafka_bootstrap)
    with open(log, "wb") as out:
        env = {**os.environ, "DAWNSTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap, "DAWNSTREAM_LOG_LEVEL": "INFO"}
        proc = subprocess.Popen([sys.executable, "-m", "dawnstream", "run", str(write(tmp_path, doc)),
                                 "--workers", "2"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_until(lambda: log.read_text().count("event=runner.start") == 2, 60, "two workers", log=log)
        first = worker_pids(proc)
        os.kill(first[0], signal.SIGKILL)
        wait_until(lambda: "event=worker.replaced" in log.read_text(), 30, "a replacement", log=log)
        wait_until(lambda: len(set(worker_pids(proc)) - set(first)) == 1 and len(worker_pids(proc)) == 2, 30,
                   "the replacement process", log=log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
