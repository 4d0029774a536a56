"""The broker's GC log: where it is written, and the pauses read back from it."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import pytest

import dawnstream.broker as broker
from dawnstream.broker import BrokerManager, parse_gc_cycles, parse_gc_pauses
from dawnstream.errors import BrokerError

# Lines as a Java 17 G1 broker writes them with -Xlog:gc:...:time,uptime (copied from a real log).
LOG = """\
[2026-12-02T04:41:38.207+0000][0.014s] Using G1
[2026-12-02T04:41:55.784+0000][45.770s] GC(17) Pause Young (Normal) (G1 Evacuation Pause) 209M->166M(512M) 119.893ms
[2026-12-02T04:41:55.790+0000][45.776s] GC(18) Concurrent Mark Cycle
[2026-12-02T04:41:56.000+0000][46.000s] GC(18) Pause Remark 200M->190M(512M) 3.100ms
[2026-12-02T04:41:56.301+0000][46.301s] GC(18) Concurrent Mark Cycle 511.204ms
[2026-12-02T04:41:57.200+0000][47.200s] GC(19) Pause Young (Concurrent Start) (System.gc()) 100M->90M(512M) 5.500ms
"""


# ... and as a Java 17 Shenandoah broker writes them (no heap sizes on most pause lines).
SHENANDOAH = """\
[2026-12-02T07:44:04.103+0000][0.007s] Using Shenandoah
[2026-12-02T07:48:03.875+0000][269.509s] GC(8) Pause Init Mark (unload classes) 0.055ms
[2026-12-02T07:48:03.914+0000][269.548s] GC(8) Concurrent marking (unload classes) 37.349ms
[2026-12-02T07:48:03.914+0000][269.548s] GC(8) Pause Final Mark (unload classes) 0.096ms
[2026-12-02T07:48:03.923+0000][269.557s] GC(8) Concurrent cleanup 530M->310M(1769M) 0.067ms
[2026-12-02T07:48:03.966+0000][269.600s] GC(8) Pause Final Update Refs 0.122ms
[2026-12-02T07:49:00.000+0000][325.000s] GC(9) Pause Degenerated GC (Mark) 900M->400M(2048M) 35.500ms
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


def test_shenandoah_pauses_are_read_and_its_concurrent_phases_are_not() -> None:
    pauses = parse_gc_pauses(SHENANDOAH)
    assert [(p.kind, p.ms) for p in pauses] == [("Pause Init Mark (unload classes)", 0.055),
                                                ("Pause Final Mark (unload classes)", 0.096),
                                                ("Pause Final Update Refs", 0.122),
                                                ("Pause Degenerated GC (Mark)", 35.5)]


def test_the_server_jvm_runs_shenandoah_and_g1_gets_a_fixed_young_generation(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(broker, "_java_has_shenandoah", lambda: True)
    monkeypatch.delenv("DAWNSTREAM_BROKER_GC", raising=False)
    server = BrokerManager(port=39292, home=tmp_path)._java_cmd("kafka.Kafka", "s.properties", heap="2g")
    assert server[1:3] == ["-Xms1024m", "-Xmx2g"] and "-XX:+UseShenandoahGC" in server
    assert not any(a.startswith(("-Xmn", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis")) for a in server)
    g1 = BrokerManager(port=39292, home=tmp_path, collector="g1")._java_cmd("kafka.Kafka", "s.properties", heap="2g")
    assert g1[1:4] == ["-Xms1024m", "-Xmx2g", "-Xmn768m"] and "-XX:+UseG1GC" in g1 and "-XX:+UseShenandoahGC" not in g1
    adaptive = BrokerManager(port=39292, home=tmp_path, collector="g1", young_gen=None)._java_cmd("kafka.Kafka", "s",
                                                                                                 heap="2g")
    assert not any(a.startswith("-Xmn") for a in adaptive)
    monkeypatch.setenv("DAWNSTREAM_BROKER_GC", "g1")
    assert "-XX:+UseG1GC" in BrokerManager(port=39292, home=tmp_path)._java_cmd("kafka.Kafka", "s", heap="2g")


def test_a_jvm_without_shenandoah_gets_g1_and_an_unknown_collector_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(broker, "_java_has_shenandoah", lambda: False)
    mgr = BrokerManager(port=39292, home=tmp_path, collector="shenandoah")
    assert mgr.jvm_collector() == "g1"
    server = mgr._java_cmd("kafka.Kafka", "s.properties", heap="2g")
    assert "-XX:+UseG1GC" in server and "-Xmn768m" in server and "-XX:+UseShenandoahGC" not in server
    with pytest.raises(BrokerError, match="DAWNSTREAM_BROKER_GC.*shenandoah, g1"):
        BrokerManager(port=39292, home=tmp_path, collector="zgc")


def test_the_running_collector_is_the_one_its_gc_log_names(tmp_path: Path) -> None:
    mgr = BrokerManager(port=39292, home=tmp_path)
    assert mgr.running_collector() is None
    (tmp_path / "gc.log").write_text(SHENANDOAH)
    assert mgr.running_collector() == "Shenandoah"


def test_a_cycle_spans_its_pauses_and_concurrent_phases_and_restarts_do_not_merge() -> None:
    cycles = parse_gc_cycles(SHENANDOAH + LOG)
    got = {(c.kind, round(c.start_s, 3), round(c.end_s, 3)) for c in cycles}
    # GC(8): from its init-mark pause to its last update-refs pause, concurrent marking included
    assert ("GC(8)", round(wall("2026-12-02T07:48:03.875+0000") - 0.000055, 3),
            round(wall("2026-12-02T07:48:03.966+0000"), 3)) in got
    # the G1 log that follows is another JVM: its GC(18) spans its own lines only
    g18 = next(c for c in cycles if c.kind == "GC(18)")
    assert g18.end_s == wall("2026-12-02T04:41:56.301+0000")
    assert abs(g18.start_s - (wall("2026-12-02T04:41:56.301+0000") - 0.511204)) < 1e-6
    assert [c.end_s for c in cycles] == sorted(c.end_s for c in cycles)
