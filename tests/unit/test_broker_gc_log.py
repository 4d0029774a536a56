"""The broker's GC log: where it is written, and the pauses read back from it."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

from dawnstream.broker import BrokerManager, parse_gc_pauses

# Lines as a Java 17 G1 broker writes them with -Xlog:gc:...:time,uptime (copied from a real log).
LOG = """\
[2026-12-02T04:41:38.207+0000][0.014s] Using G1
[2026-12-02T04:41:55.784+0000][45.770s] GC(17) Pause Young (Normal) (G1 Evacuation Pause) 209M->166M(512M) 119.893ms
[2026-12-02T04:41:55.790+0000][45.776s] GC(18) Concurrent Mark Cycle
[2026-12-02T04:41:56.000+0000][46.000s] GC(18) Pause Remark 200M->190M(512M) 3.100ms
[2026-12-02T04:41:56.301+0000][46.301s] GC(18) Concurrent Mark Cycle 511.204ms
[2026-12-02T04:41:57.200+0000][47.200s] GC(19) Pause Young (Concurrent Start) (System.gc()) 100M->90M(512M) 5.500ms
"""


def wall(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def test_pauses_are_the_stop_the_world_lines_with_their_end_and_length() -> None:
    pauses = parse_gc_pauses(LOG)
    assert [(p.kind, p.ms) for p in pauses] == [("Pause Young (Normal) (G1 Evacuation Pause)", 119.893),
                                                ("Pause Remark", 3.1),
                                                ("Pause Young (Concurrent Start) (System.gc())", 5.5)]
    first = pauses[0]
    assert first.end_s == wall("2026-12-02T04:41:55.784+0000")
    assert abs(first.start_s - (first.end_s - 0.119893)) < 1e-9


def test_a_window_keeps_the_pauses_that_ended_in_it(tmp_path: Path) -> None:
    mgr = BrokerManager(port=39292, home=tmp_path)
    assert mgr.gc_pauses(0, time.time()) is None  # no log: a broker started before it existed
    (tmp_path / "gc.log.0").write_text(LOG.splitlines(keepends=True)[1])  # rotated away
    os.utime(tmp_path / "gc.log.0", (1, 1))
    (tmp_path / "gc.log").write_text("".join(LOG.splitlines(keepends=True)[2:]))
    got = mgr.gc_pauses(wall("2026-12-02T04:41:55.000+0000"), wall("2026-12-02T04:41:56.500+0000"))
    assert [p.ms for p in got] == [119.893, 3.1]


def test_the_server_jvm_writes_its_gc_log_in_the_broker_home(tmp_path: Path) -> None:
    mgr = BrokerManager(port=39292, home=tmp_path)
    server = mgr._java_cmd("kafka.Kafka", "server.properties", heap="1g")
    assert f"-Xlog:gc:file={tmp_path / 'gc.log'}:time,uptime:filecount=2,filesize=10m" in server
    tool = mgr._java_cmd("kafka.tools.StorageTool", "format")
    assert not any(a.startswith("-Xlog") for a in tool)  # the storage tool would overwrite the server's


def test_the_server_jvm_gets_a_fixed_young_generation_unless_told_not_to(tmp_path: Path) -> None:
    server = BrokerManager(port=39292, home=tmp_path)._java_cmd("kafka.Kafka", "s.properties", heap="2g")
    assert server[1:4] == ["-Xms1024m", "-Xmx2g", "-Xmn768m"]
    adaptive = BrokerManager(port=39292, home=tmp_path, young_gen=None)._java_cmd("kafka.Kafka", "s", heap="2g")
    assert not any(a.startswith("-Xmn") for a in adaptive)
