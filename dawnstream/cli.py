"""The ``dawnstream`` command line (typer). Every command has ``--help``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dawnstream.errors import DawnstreamError
from dawnstream.logs import configure
from dawnstream.progress import Progress

app = typer.Typer(help="dawnstream: streaming ML operators over Kafka topics and Arrow batches.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
broker_app = typer.Typer(help="Run a local single-node Kafka 4.x broker (KRaft) from Maven Central jars.",
                         no_args_is_help=True)
topics_app = typer.Typer(help="Create, list and describe topics.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
app.add_typer(topics_app, name="topics")
console = Console(stderr=True)
out = Console()

PortOpt = Annotated[int, typer.Option(help="Broker client port on 127.0.0.1 (controller uses port+1).")]
BootstrapOpt = Annotated[str, typer.Option(envvar="DAWNSTREAM_KAFKA_BOOTSTRAP", help="Kafka bootstrap address.")]


def _fail(e: Exception) -> None:
    console.print(f"[bold red]error:[/] {escape(str(e))}")  # an example [a, b] is no markup
    raise typer.Exit(2)


# -- broker ------------------------------------------------------------------------------------
@broker_app.command("start")
def broker_start(
    port: PortOpt = 9092,
    version: Annotated[str | None, typer.Option(help="Kafka 4.x version (default: the tested one).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker to answer.")] = 120.0,
) -> None:
    """Download Kafka (once), format storage (once), start the broker and print its bootstrap address."""
    from dawnstream.broker import BrokerManager

    try:
        mgr = BrokerManager(port=port, version=version) if version else BrokerManager(port=port)
        with console.status(f"starting Kafka {mgr.version} on 127.0.0.1:{port} ..."):
            addr = mgr.start(timeout_s=timeout)
    except DawnstreamError as e:
        _fail(e)
    typer.echo(addr)


@broker_app.command("stop")
def broker_stop(port: PortOpt = 9092) -> None:
    """Stop the broker this tool started on PORT (never any other process)."""
    from dawnstream.broker import BrokerManager

    stopped = BrokerManager(port=port).stop()
    out.print("stopped" if stopped else "no broker started by dawnstream is running on that port")


@broker_app.command("status")
def broker_status(port: PortOpt = 9092) -> None:
    """Print pid, bootstrap address and whether the broker answers (JSON)."""
    from dawnstream.broker import BrokerManager

    st = BrokerManager(port=port).status()
    typer.echo(json.dumps(st, indent=2))
    if not st["answers"]:
        raise typer.Exit(1)


@broker_app.command("logs")
def broker_logs(port: PortOpt = 9092, lines: Annotated[int, typer.Option("-n", "--lines")] = 50) -> None:
    """Print the last lines of the broker log."""
    from dawnstream.broker import BrokerManager

    sys.stdout.write(BrokerManager(port=port).logs(lines) + "\n")


# -- topics ------------------------------------------------------------------------------------
@topics_app.command("create")
def topics_create(
    name: str,
    partitions: Annotated[int, typer.Option(min=1)] = 1,
    codec: Annotated[str, typer.Option(help="json | arrow | frames | requests")] = "json",
    config: Annotated[list[str] | None, typer.Option(help="Topic config KEY=VALUE (repeatable).")] = None,
    dlq: Annotated[bool, typer.Option(help="Also create <name>.dlq.")] = True,
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
) -> None:
    """Create a topic named <domain>.<dataset>.<event>.v<N> (and its dead-letter topic)."""
    from pydantic import ValidationError

    from dawnstream.streams.kafka_clients import TopicAdmin
    from dawnstream.topics.spec import TopicSpec

    try:
        cfg = dict(kv.split("=", 1) for kv in (config or []))
        spec = TopicSpec(name=name, partitions=partitions, codec=codec, config=cfg)
        specs = [spec, spec.dlq()] if dlq else [spec]
        created = TopicAdmin(bootstrap).ensure(specs)
    except ValidationError as e:
        _fail(DawnstreamError("; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())))
    except (DawnstreamError, ValueError) as e:
        _fail(e)
    out.print(f"created: {', '.join(created) or 'nothing (already there)'}")


@topics_app.command("list")
def topics_list(bootstrap: BootstrapOpt = "127.0.0.1:9092") -> None:
    """List topics and partition counts."""
    from dawnstream.streams.kafka_clients import TopicAdmin

    try:
        topics = TopicAdmin(bootstrap).list_topics()
    except DawnstreamError as e:
        _fail(e)
    t = Table("topic", "partitions")
    for name in sorted(topics):
        t.add_row(name, str(topics[name]))
    out.print(t)


@topics_app.command("describe")
def topics_describe(name: str, bootstrap: BootstrapOpt = "127.0.0.1:9092") -> None:
    """Partitions (leader, offsets, message counts) and non-default configs of a topic (JSON)."""
    from dawnstream.streams.kafka_clients import TopicAdmin

    try:
        typer.echo(json.dumps(TopicAdmin(bootstrap).describe(name), indent=2))
    except DawnstreamError as e:
        _fail(e)


# -- run / process / replay ---------------------------------------------------------------------
@app.command("run")
def run(
    topology: Annotated[Path, typer.Argument(help="Topology YAML file.")],
    workers: Annotated[int, typer.Option(min=1, help="Worker processes in the consumer group.")] = 1,
    max_idle: Annotated[float | None, typer.Option(help="Stop after this many seconds without input.")] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Override kafka.bootstrap of the topology.")] = None,
    create_topics: Annotated[bool, typer.Option(
        help="Create missing input/output/dead-letter topics first; with --no-create-topics a missing "
             "one stops the job naming it.")] = True,
) -> None:
    """Run a topology against Kafka with N worker processes (SIGTERM flushes and commits).

    Exits 0 when every worker stopped cleanly; 1 when one failed (the reason is printed and the
    others are stopped); a worker killed by a signal is replaced.
    """
    from dawnstream.streams.config import load_topology
    from dawnstream.streams.workers import run_workers

    try:
        load_topology(topology)  # fail fast here, not in N children
        outcome = run_workers(topology, workers, max_idle, bootstrap, create_topics=create_topics)
    except DawnstreamError as e:
        _fail(e)
    if outcome.error is not None:
        console.print(f"[bold red]error:[/] {escape(str(outcome.error))}")
    raise typer.Exit(outcome.exit_code)


@app.command("process")
def process(
    topology: Annotated[Path, typer.Argument(help="Topology YAML file.")],
    source: Annotated[str, typer.Argument(help="File (.csv/.csv.gz/.zip/.parquet/.jsonl) or dataset name.")],
    out_path: Annotated[Path, typer.Option("--out", help="Output file (.csv, .parquet, .jsonl).")],
) -> None:
    """Run a topology's stages over a file in this process (no Kafka) and write the output rows."""
    from dawnstream.sources import read_table, write_table
    from dawnstream.streams.config import load_topology
    from dawnstream.streams.local_runner import LocalRunner

    try:
        topo = load_topology(topology)
        runner = LocalRunner(topo, encode=False)
        res = runner.run_table(read_table(source))
        table = res.table()
        if table is None:
            console.print("no output rows")
        else:
            write_table(table, out_path)
    except DawnstreamError as e:
        _fail(e)
    stage = label_stage(runner)
    if stage is not None:  # the LF table a Snorkel user iterates on (stderr: stdout stays one JSON line)
        from dawnstream.operators.labeling.report import lf_table

        print_lf_table(lf_table(stage))
    typer.echo(json.dumps({"rows_in": res.rows_in, "rows_out": res.rows_out, "out": str(out_path)}))


@app.command("replay")
def replay(
    source: Annotated[
        str, typer.Argument(help="File (.csv/.csv.gz/.zip/.parquet/.jsonl), dataset (flights, weather, movielens, "
                                 "rotten_tomatoes), or video (.avi/.mp4/..., or vtest): JPEG frames, key = camera.")
    ],
    topic: Annotated[str, typer.Option(help="Topic to produce to.")],
    fmt: Annotated[str, typer.Option("--format", help="json (one row per message) or arrow (batches).")] = "json",
    batch_rows: Annotated[int, typer.Option(min=1, help="Rows per Arrow message.")] = 10_000,
    rate: Annotated[float | None, typer.Option(help="Rows/s ceiling (default: as fast as possible).")] = None,
    key: Annotated[str | None, typer.Option(help="Column used as message key.")] = None,
    limit: Annotated[int | None, typer.Option(help="Replay only the rows (frames) before index N.")] = None,
    start: Annotated[int, typer.Option(min=0, help="The first row (frame) index replayed; the ones before are "
                                                   "skipped.")] = 0,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions if the topic must be created.")] = 1,
    camera: Annotated[str | None, typer.Option(help="Video: the camera id (default: the file's name).")] = None,
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
) -> None:
    """Produce a file, a real dataset or a video's frames to a topic, with a progress bar (rows/s)."""
    from dawnstream.sources import read_table
    from dawnstream.streams.kafka_clients import TopicAdmin
    from dawnstream.streams.replay import replay_table
    from dawnstream.streams.replay_video import is_video, replay_video
    from dawnstream.topics.spec import TopicSpec

    if is_video(source):
        try:
            spec = TopicSpec(name=topic, partitions=partitions, codec="frames")
            TopicAdmin(bootstrap).ensure([spec, spec.dlq()])
            with Progress(f"replay {source} -> {topic}", total=None if limit is None else max(limit - start, 0),
                          unit="frames") as bar:
                stats = replay_video(source, topic, camera, bootstrap, rate, limit, start=start, progress=bar.advance)
        except DawnstreamError as e:
            _fail(e)
        typer.echo(json.dumps({"topic": topic, "frames": stats.rows, "bytes": stats.bytes,
                               "seconds": round(stats.seconds, 3), "frames_per_s": round(stats.rows_per_s)}))
        return
    try:
        spec = TopicSpec(name=topic, partitions=partitions, codec=fmt if fmt in ("json", "arrow") else "json")
        table = read_table(source)
        if limit is not None:
            table = table.slice(0, limit)
        table = table.slice(min(start, table.num_rows))
        TopicAdmin(bootstrap).ensure([spec, spec.dlq()])
        with Progress(f"replay {source} -> {topic}", total=table.num_rows, unit="rows") as bar:
            stats = replay_table(table, topic, fmt, batch_rows, rate, key, bootstrap, progress=bar.advance)
    except DawnstreamError as e:
        _fail(e)
    except ValueError as e:
        _fail(e)
    typer.echo(json.dumps({"topic": topic, "rows": stats.rows, "messages": stats.messages, "bytes": stats.bytes,
                          "seconds": round(stats.seconds, 3), "rows_per_s": round(stats.rows_per_s)}))


from dawnstream.outliers_cli import detect as _detect  # noqa: E402 - registered after the core commands
from dawnstream.outliers_cli import explain as _explain  # noqa: E402

app.command("explain")(_explain)
app.command("detect")(_detect)

from dawnstream.labels_cli import label_stage, print_lf_table  # noqa: E402
from dawnstream.labels_cli import lfs as _lfs  # noqa: E402
from dawnstream.models_cli import models_app as _models_app  # noqa: E402
from dawnstream.models_cli import predict as _predict  # noqa: E402

app.add_typer(_models_app, name="models")
app.command("predict")(_predict)
app.command("lfs")(_lfs)

accel_app = typer.Typer(help="The accel layer: fused, compiled operator chains.", no_args_is_help=True)
app.add_typer(accel_app, name="accel")


@accel_app.command("plan")
def accel_plan(
    topology: Annotated[Path, typer.Argument(help="Topology YAML file.")],
    sample: Annotated[str | None, typer.Option(help="Data file or dataset name to take the input schema from.")]
    = None,
) -> None:
    """Print the fused plan of a topology: pipelines, breakers, chosen backend (like EXPLAIN)."""
    from dawnstream.sources import read_table
    from dawnstream.streams.config import load_topology
    from dawnstream.streams.plan import plan_topology

    try:
        topo = load_topology(topology)
        schema = read_table(sample).slice(0, 1).schema if sample else None
        typer.echo(plan_topology(topo, schema))
    except (DawnstreamError, ValueError, OSError) as e:
        _fail(e)


@app.command("ui")
def ui(
    host: Annotated[str, typer.Option(help="Address to serve the dashboard on (127.0.0.1: this machine only).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Dashboard port.")] = 8686,
    target: Annotated[list[str] | None, typer.Option(
        "--target", help="A worker's metrics endpoint (http://host:port), besides the announced ones; repeatable.")]
    = None,
    discover: Annotated[bool, typer.Option(help="Show the workers that announce themselves on this machine.")]
    = True,
    bootstrap: BootstrapOpt = "127.0.0.1:9092",
    no_broker: Annotated[bool, typer.Option("--no-broker", help="Do not ask the broker (topics, lag, dead letters).")]
    = False,
    registry: Annotated[Path | None, typer.Option(help="Model registry directory (default: $DAWNSTREAM_REGISTRY, "
                                                       "else ~/.local/share/dawnstream/registry).")] = None,
) -> None:
    """A live, read-only web dashboard of the running jobs: workers, partitions and lag, rows/s, latency,
    dead letters, each capability's panel and the model registry. Open http://HOST:PORT/."""
    from dawnstream.models.registry import Registry
    from dawnstream.ui.app import serve
    from dawnstream.ui.collector import Collector

    collector = Collector(targets=target or [], bootstrap=None if no_broker else bootstrap,
                          registry=Registry(registry) if registry else None, discover=discover)
    console.print(f"dawnstream ui: http://{host}:{port}/ (read-only; Ctrl-C stops it)")
    try:
        serve(collector, host, port)
    except OSError as e:
        _fail(DawnstreamError(f"cannot serve on {host}:{port} ({e.strerror}): pick another --port"))


def main() -> None:
    """Entry point of the ``dawnstream`` script."""
    configure()
    app()


if __name__ == "__main__":
    main()
