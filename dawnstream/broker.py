"""A local single-node Apache Kafka 4.x broker (KRaft, combined broker+controller), no Docker.

Jars come from Maven Central through Maven (``dependency:copy-dependencies``) into a cache dir
that later runs reuse; storage is formatted once (``kafka.tools.StorageTool format --standalone``);
the broker runs as ``java -cp 'libs/*' kafka.Kafka server.properties`` bound to 127.0.0.1 and is
ready when a real Kafka protocol round-trip (Metadata request) answers. ``stop`` only ever
signals the pid this manager started, after checking its command line.

This is tooling for development, tests and demos (it needs a JVM and Maven), not part of the
runtime: workers only need a bootstrap address. Settings follow Kafka's own single-node KRaft
example (``config/server.properties`` of the Kafka distribution): combined broker+controller roles,
``controller.quorum.bootstrap.servers`` with ``--standalone`` formatting, replication factor 1 for
the internal topics, ``group.initial.rebalance.delay.ms=0``.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dawnstream.errors import BrokerError
from dawnstream.logs import event, get_logger

log = get_logger(__name__)

DEFAULT_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
KAFKA_ARTIFACTS = (
    "kafka_2.13",
    "kafka-server",
    "kafka-storage",
    "kafka-metadata",
    "kafka-raft",
    "kafka-clients",
    "kafka-tools",
)
# Kafka 4.x stays on SLF4J 1.7; its published POMs do not pull a logging backend reliably.
EXTRA_DEPS = (
    ("org.slf4j", "slf4j-api", "1.7.36"),
    ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
    ("org.apache.logging.log4j", "log4j-api", LOG4J_VERSION),
    ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
)
JVM_PERFORMANCE_OPTS = ("-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
                        "-XX:+ExplicitGCInvokesConcurrent")
"""G1, Kafka's defaults from ``bin/kafka-run-class.sh`` (``KAFKA_JVM_PERFORMANCE_OPTS``)."""
COLLECTORS: dict[str, tuple[str, ...]] = {
    "shenandoah": ("-XX:+UseShenandoahGC", "-XX:+ExplicitGCInvokesConcurrent"),
    "g1": JVM_PERFORMANCE_OPTS,
}
"""The broker JVM's garbage collectors and their options (:attr:`BrokerManager.collector`)."""
LOG4J2 = """\
rootLogger.level=INFO
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka
logger.kafka.level=WARN
logger.apache.name=org.apache.kafka
logger.apache.level=WARN
logger.ready.name=kafka.server.KafkaRaftServer
logger.ready.level=INFO
"""


def cache_root() -> Path:
    """``$DAWNSTREAM_CACHE`` or ``~/.cache/dawnstream``."""
    return Path(os.environ.get("DAWNSTREAM_CACHE", Path.home() / ".cache" / "dawnstream"))


def java_major_version(java: str = "java") -> int:
    """Major version of ``java`` on PATH (17 for ``openjdk version "17.0.15"``).

    Raises:
        BrokerError: Java is missing or its version cannot be read.
    """
    if shutil.which(java) is None:
        raise BrokerError(
            "Java is not installed: install a JDK/JRE 17 or newer (e.g. apt-get install openjdk-17-jre-headless)"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        raise BrokerError(f"cannot read the Java version from: {out.stderr.strip()[:200]}")
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def _answers(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def kafka_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when a Kafka Metadata round-trip to ``bootstrap`` succeeds within ``timeout_s``."""
    host, _, port = bootstrap.rpartition(":")
    if not _answers(host or "127.0.0.1", int(port)):
        return False
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "log_level": 0, "logger": _QuietLogger()}
    admin = AdminClient(conf)
    try:
        md = admin.list_topics(timeout=timeout_s)
        return bool(md.brokers)
    except Exception:  # noqa: BLE001 - any client failure means "not ready yet"
        return False


class _QuietLogger:
    """Swallows librdkafka's connection-refused chatter while we poll for readiness."""

    def log(self, *args: object, **kwargs: object) -> None:
        pass

    def __getattr__(self, name: str) -> object:
        return self.log


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding, never starting with ``-``
    (the storage tool would read it as an option; Kafka's ``Uuid.randomUuid`` skips those too)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


@dataclass
class BrokerManager:
    """Install, start, stop and inspect one local broker.

    Args:
        port: client (PLAINTEXT) port on 127.0.0.1, default 9092.
        controller_port: KRaft controller port, default ``port + 1``.
        version: Apache Kafka version from Maven Central (``$DAWNSTREAM_KAFKA_VERSION``, 4.x).
        home: state dir (config, data, log, pid); default ``<cache>/broker-<port>``.
        heap: JVM heap, e.g. ``2g``.
        collector: the broker JVM's garbage collector, ``shenandoah`` (default; ``$DAWNSTREAM_BROKER_GC``) or
            ``g1`` (Kafka's own choice; also used where the JVM has no Shenandoah, e.g. Oracle's builds).
            Shenandoah (JEP 379) moves objects while the broker runs: its pauses stay under 1 ms, where
            G1's young pauses on this 2-core machine took 35-150 ms every 30-80 s under serving load
            (G1 copies what survives, some 10-25 MB, on GC threads that wait for cores the workers and
            clients hold) and were most of the replies over a 20 ms SLO (``benchmarks/serving.py``:
            each ladder step counts its replies in flight during a pause). Same CPU per request.
        young_gen: G1 only: the young generation's fixed size (``-Xmn``), e.g. ``768m``; None lets G1 size it for
            its 20 ms pause goal. Fixed and large because on a small machine shared with the workers and
            clients G1 misses the goal anyway (young pauses of 12-40 ms, GC threads waiting for a core)
            and sizes the young generation down, collecting every 1-3 s under load; a young collection
            costs about what survives it, not the young generation's size, so 768m collects ~10x less
            often for ~10x less total pause time (the broker's GC log during ``benchmarks/serving.py``).
    """

    port: int = 9092
    controller_port: int | None = None
    version: str = field(default_factory=lambda: os.environ.get("DAWNSTREAM_KAFKA_VERSION", DEFAULT_VERSION))
    home: Path | None = None
    heap: str = "2g"
    young_gen: str | None = "768m"
    collector: str = field(default_factory=lambda: os.environ.get("DAWNSTREAM_BROKER_GC", "shenandoah"))

    def __post_init__(self) -> None:
        if self.collector not in COLLECTORS:
            raise BrokerError(f"unknown broker garbage collector {self.collector!r} (DAWNSTREAM_BROKER_GC): expected "
                              f"one of {', '.join(COLLECTORS)}")
        if self.controller_port is None:
            self.controller_port = self.port + 1
        if self.home is None:
            self.home = cache_root() / f"broker-{self.port}"
        if not self.version.startswith("4."):
            raise BrokerError(f"Kafka version {self.version!r} is not 4.x: this project needs KRaft-only Kafka 4.x")

    # -- paths --------------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def libs(self) -> Path:
        return cache_root() / "kafka" / self.version / "libs"

    @property
    def _home(self) -> Path:
        assert self.home is not None
        return self.home

    @property
    def log_file(self) -> Path:
        return self._home / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self._home / "broker.pid"

    @property
    def config_file(self) -> Path:
        return self._home / "server.properties"

    @property
    def gc_log(self) -> Path:
        """The broker JVM's garbage collection log (one line per pause; Kafka's own start script keeps
        one too, ``kafkaServer-gc.log``): where a latency tail that no client can explain often is."""
        return self._home / "gc.log"

    def gc_pauses(self, start_s: float, end_s: float) -> list[GcPause] | None:
        """The broker's stop-the-world GC pauses that ended between ``start_s`` and ``end_s`` (wall-clock
        seconds, as ``time.time()``), oldest first; None when this broker keeps no GC log (one started
        before the log was added: restart it)."""
        text = self._gc_text()
        return None if text is None else [p for p in parse_gc_pauses(text) if start_s <= p.end_s <= end_s]

    def gc_cycles(self, start_s: float, end_s: float) -> list[GcPause] | None:
        """The broker's whole GC cycles (pauses and concurrent phases) that overlap ``start_s``..``end_s``
        (see :func:`parse_gc_cycles`); None without a GC log."""
        text = self._gc_text()
        return None if text is None else [c for c in parse_gc_cycles(text) if c.start_s <= end_s and c.end_s >= start_s]

    def _gc_text(self) -> str | None:
        texts = []
        for f in sorted(self._home.glob("gc.log*"), key=lambda f: f.stat().st_mtime):
            try:
                texts.append(f.read_text("utf-8", "replace"))
            except OSError:
                continue
        return "\n".join(texts) if texts else None

    # -- install ------------------------------------------------------------------------------
    def install(self) -> Path:
        """Download the Kafka jars with Maven (once; reused later). Returns the libs dir.

        Raises:
            BrokerError: Java < 17, Maven missing, or the download failed (with Maven's output tail).
        """
        if java_major_version() < 17:
            raise BrokerError("Kafka 4.x needs Java 17 or newer: install a newer JDK and put it first on PATH")
        marker = self.libs / ".complete"
        if marker.exists():
            return self.libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError("Maven (mvn) is not installed: it downloads the Kafka jars (apt-get install maven)")
        work = self.libs.parent
        work.mkdir(parents=True, exist_ok=True)
        deps = [("org.apache.kafka", a, self.version) for a in KAFKA_ARTIFACTS] + list(EXTRA_DEPS)
        dep_xml = "\n".join(
            f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
            for g, a, v in deps
        )
        (work / "pom.xml").write_text(
            '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
            "  <modelVersion>4.0.0</modelVersion>\n"
            f"  <groupId>dawnstream</groupId><artifactId>kafka-libs</artifactId><version>{self.version}</version>\n"
            "  <packaging>pom</packaging>\n"
            f"  <dependencies>\n{dep_xml}\n  </dependencies>\n</project>\n"
        )
        tmp = work / "libs.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        event(log, "broker.install", version=self.version, dir=str(self.libs))
        proc = subprocess.run(
            [mvn, "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"],
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise BrokerError(
                f"Maven could not download Kafka {self.version} (exit {proc.returncode}); check network "
                "access to Maven Central and the version. Maven said:\n" + "\n".join(tail)
            )
        shutil.rmtree(self.libs, ignore_errors=True)
        tmp.rename(self.libs)
        marker.touch()
        return self.libs

    # -- config -------------------------------------------------------------------------------
    def _write_config(self) -> None:
        home = self._home
        (home / "data").mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(home / "data"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "8",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Frames and 10,000-row Arrow batches: allow 16 MiB messages.
            "message.max.bytes": "16777216",
            "replica.fetch.max.bytes": "16777216",
            "log.retention.hours": "24",
            "log.segment.bytes": str(256 << 20),
            "auto.create.topics.enable": "false",  # typos must fail, not create topics
        }
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (home / "log4j2.properties").write_text(LOG4J2)

    def _java_cmd(self, main: str, *args: str, heap: str | None = None) -> list[str]:
        cmd = ["java"]
        if heap:  # the server (tools get no heap): its GC log, two files of at most 10 MB
            gc = self.jvm_collector()
            g1 = gc == "g1"
            cmd += [f"-Xms{min_heap(heap)}", f"-Xmx{heap}",
                    *([f"-Xmn{self.young_gen}"] if self.young_gen and g1 else []),
                    f"-Xlog:gc:file={self.gc_log}:time,uptime:filecount=2,filesize=10m"]
        cmd += [
            # With G1 and -Xmn the young generation no longer follows the 20 ms pause goal; the goal still
            # bounds how much old generation each mixed collection takes (without it G1 aims at 200 ms).
            *COLLECTORS[gc if heap else "g1"],  # (a tool's few seconds: any collector does)
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self._home / 'log4j2.properties'}",
            "-cp",
            str(self.libs / "*"),
            main,
            *args,
        ]
        return cmd

    def jvm_collector(self) -> str:
        """The collector the server JVM runs: :attr:`collector`, or ``g1`` where ``java`` lacks it."""
        if self.collector == "shenandoah" and not _java_has_shenandoah():
            event(log, "broker.gc_fallback", level=logging.WARNING, wanted="shenandoah", using="g1",
                  why="this JVM has no Shenandoah (java -XX:+UseShenandoahGC -version failed)")
            return "g1"
        return self.collector

    def _format(self) -> None:
        if (self._home / "data" / "meta.properties").exists():
            return
        cluster_id = new_cluster_id()
        proc = subprocess.run(
            self._java_cmd(
                "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config_file), "--standalone"
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed:\n{(proc.stdout + proc.stderr)[-2000:]}")

    # -- lifecycle ----------------------------------------------------------------------------
    def pid(self) -> int | None:
        """Pid of the broker this manager started, if it is still that broker."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return None
        return pid if "kafka.Kafka" in cmdline and str(self.config_file) in cmdline else None

    def start(self, timeout_s: float = 90.0) -> str:
        """Start the broker unless one already answers on the port; return the bootstrap address.

        Raises:
            BrokerError: install/format failed, the JVM exited, or no answer within ``timeout_s``
                (the log tail is in the message).
        """
        if kafka_answers(self.bootstrap):
            event(log, "broker.already_running", bootstrap=self.bootstrap)
            return self.bootstrap
        if _answers("127.0.0.1", self.port):
            raise BrokerError(
                f"port {self.port} is taken by something that does not speak Kafka; pick another with --port"
            )
        self.install()
        self._home.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._format()
        logf = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        try:
            proc = subprocess.Popen(
                self._java_cmd("kafka.Kafka", str(self.config_file), heap=self.heap),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # the broker outlives the CLI that started it
            )
        finally:
            logf.close()
        self.pid_file.write_text(str(proc.pid))
        event(log, "broker.starting", pid=proc.pid, bootstrap=self.bootstrap)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(f"the Kafka JVM exited with code {proc.returncode}; log tail:\n{self.logs(40)}")
            if kafka_answers(self.bootstrap, timeout_s=1.0):
                event(log, "broker.ready", bootstrap=self.bootstrap)
                return self.bootstrap
            time.sleep(0.3)
        raise BrokerError(
            f"Kafka did not answer on {self.bootstrap} within {timeout_s:.0f}s; log tail:\n{self.logs(40)}"
        )

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker this manager started (SIGTERM, then SIGKILL after ``timeout_s``).

        Returns:
            True when a broker was stopped, False when none of ours was running.
        """
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pid() is None:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        event(log, "broker.stopped", pid=pid)
        return True

    def status(self) -> dict[str, object]:
        """``{"bootstrap", "pid", "answers", "version", "home", "collector"}`` (``collector``: the garbage
        collector the running broker reports in its GC log, e.g. ``Shenandoah``; None when unknown)."""
        return {
            "bootstrap": self.bootstrap,
            "pid": self.pid(),
            "answers": kafka_answers(self.bootstrap),
            "version": self.version,
            "home": str(self._home),
            "collector": self.running_collector(),
        }

    def running_collector(self) -> str | None:
        """The collector named by the GC log's last ``Using ...`` line (written when the JVM starts), or None."""
        found = re.findall(r"\] Using (\w+)", self._gc_text() or "")
        return found[-1] if found else None

    def logs(self, lines: int = 50) -> str:
        """Last ``lines`` lines of the broker log ('' when there is none)."""
        try:
            data = self.log_file.read_bytes()[-256 * 1024 :]
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


@dataclass(frozen=True)
class GcPause:
    """One stop-the-world pause of the broker JVM: ``end_s`` wall-clock seconds (``time.time()``) when
    it ended, ``ms`` its length, ``kind`` as the JVM names it (``Pause Young (Normal) (G1 Evacuation
    Pause)``)."""

    end_s: float
    ms: float
    kind: str

    @property
    def start_s(self) -> float:
        return self.end_s - self.ms / 1000.0


_GC_LINE = re.compile(r"^\[(?P<time>[^\]]+)\].*?(?P<kind>Pause .*?)\s(?:[\d.]+[KMG]->\S+\s+)?(?P<ms>[\d.]+)ms\s*$")


def parse_gc_pauses(text: str) -> list[GcPause]:
    """Pauses from a JVM unified GC log (``-Xlog:gc:...:time``): lines like ``[2026-12-02T04:52:16.455+0000]
    [7.559s] GC(7) Pause Young (Normal) (G1 Evacuation Pause) 191M->158M(498M) 9.979ms``. Other lines
    (concurrent phases, which do not stop the broker) are skipped."""
    return [GcPause(end, float(m["ms"]), m["kind"].strip()) for _, m, end in _gc_lines(text, _GC_LINE) if m]


def _gc_lines(text: str, pattern: re.Pattern[str]) -> Iterator[tuple[str, re.Match[str] | None, float]]:
    """Each line of a GC log, ``pattern``'s match on it (None: no match, or an unreadable time stamp) and
    the wall-clock second it was written (0.0 without a match)."""
    from datetime import datetime

    for line in text.splitlines():
        m = pattern.match(line)
        if m is None:
            yield line, None, 0.0
            continue
        try:
            yield line, m, datetime.strptime(m["time"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
        except ValueError:
            yield line, None, 0.0


@functools.cache
def _java_has_shenandoah() -> bool:
    try:
        return subprocess.run(["java", "-XX:+UseShenandoahGC", "-version"], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


_GC_PHASE = re.compile(r"^\[(?P<time>[^\]]+)\].*?GC\((?P<id>\d+)\)\s.*?\s(?:[\d.]+[KMG]->\S+\s+)?(?P<ms>[\d.]+)ms\s*$")


def parse_gc_cycles(text: str) -> list[GcPause]:
    """Whole collections from a JVM unified GC log: each ``GC(n)``'s span from the start of its first
    timed phase to the end of its last, pauses and concurrent phases alike, as a :class:`GcPause` of kind
    ``GC(n)``. A concurrent phase stops nothing, but on a small machine its GC threads take a core from
    the broker's request threads and from every process beside it (Shenandoah's cycle: ~150 ms of
    marking, evacuation and reference updating, every 1-3 min under serving load on 2 cores)."""
    out: list[GcPause] = []
    spans: dict[int, list[float]] = {}

    def flush() -> None:
        out.extend(GcPause(e, (e - s) * 1000.0, f"GC({n})") for n, (s, e) in spans.items())
        spans.clear()

    for line, m, end in _gc_lines(text, _GC_PHASE):
        if "] Using " in line:  # a JVM (re)started: its GC(n) count starts again
            flush()
        if m is None:
            continue
        start = end - float(m["ms"]) / 1000.0
        span = spans.setdefault(int(m["id"]), [start, end])
        span[0], span[1] = min(span[0], start), max(span[1], end)
    flush()
    return sorted(out, key=lambda c: c.end_s)


def min_heap(heap: str) -> str:
    """Initial heap for ``-Xms``: half of ``heap`` when it is given in g/m, else ``heap``."""
    m = re.fullmatch(r"(\d+)([gGmM])", heap)
    if not m:
        return heap
    n, unit = int(m.group(1)), m.group(2).lower()
    mb = n * 1024 if unit == "g" else n
    return f"{max(mb // 2, 256)}m"
