"""``dawnstream models …`` (the registry) and ``dawnstream predict`` (request/reply from the shell)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dawnstream.errors import DawnstreamError
from dawnstream.progress import Progress

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)  # piped: no names cut to the default 80 columns
models_app = typer.Typer(help="The model registry: versions, lineage, promotion, rollback, retraining.",
                         no_args_is_help=True)
RegistryOpt = Annotated[Path | None, typer.Option(
    envvar="DAWNSTREAM_REGISTRY", help="Registry root (default ~/.local/share/dawnstream/registry).")]


def _fail(e: Exception) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(e))}")  # a signature's [None, 3] is no markup
    raise typer.Exit(2)


def _registry(root: Path | None) -> Any:
    from dawnstream.models.registry import Registry

    return Registry(root)


@models_app.command("list")
def models_list(registry: RegistryOpt = None) -> None:
    """Every model: versions, the promoted one, format and size of the latest."""
    try:
        reg = _registry(registry)
        table = Table(title=f"models in {reg.root}")
        for col in ("model", "versions", "promoted", "latest", "format", "bytes", "created"):
            table.add_column(col, no_wrap=True)
        for name in reg.names():
            versions = reg.versions(name)
            if not versions:
                continue
            last = versions[-1]
            table.add_row(name, str(len(versions)), str(reg.promoted_version(name) or "-"), str(last.version),
                          last.format, f"{last.size_bytes:,}",
                          dt.datetime.fromtimestamp(last.created_at).isoformat(timespec="seconds"))
        out.print(table)
    except DawnstreamError as e:
        _fail(e)


@models_app.command("show")
def models_show(name: str, version: Annotated[int | None, typer.Option(help="Default: the promoted one.")] = None,
                registry: RegistryOpt = None) -> None:
    """One version's metadata as JSON: content hash, parent, training data (topic, offsets), metrics."""
    try:
        reg = _registry(registry)
        mv = reg.get(name, version)
        typer.echo(json.dumps({**mv.to_json(), "path": str(mv.path), "promoted": reg.promoted_version(name)},
                              indent=2))
    except DawnstreamError as e:
        _fail(e)


@models_app.command("register")
def models_register(
    name: str,
    file: Annotated[Path, typer.Argument(help="The artifact: a .onnx graph (from skl2onnx, torch.onnx, onnxmltools), "
                                              "or a .npz / .safetensors of a dawnstream model.")],
    topology: Annotated[Path | None, typer.Option(
        help="Check the model against this topology's predict stage first (the same check a worker makes "
             "when it loads a version): a model whose inputs do not match is refused, with both signatures.")] = None,
    promote: Annotated[bool, typer.Option(help="Promote it at once (workers swap it in within about a second).")]
    = False,
    registry: RegistryOpt = None,
) -> None:
    """Register FILE as the next version of NAME; prints the version and, for ONNX, the graph's signature."""
    try:
        from dawnstream.models.registry import FORMATS, ModelError

        fmt = file.suffix.lstrip(".").lower()
        if fmt not in FORMATS:
            raise ModelError(f"{file}: expected a .onnx, .npz or .safetensors file (never pickle), got {file.suffix!r}")
        if not file.is_file():
            raise ModelError(f"{file}: no such file")
        data = file.read_bytes()
        signature = _signature(data) if fmt == "onnx" else None
        reg = _registry(registry)
        if topology is not None:
            _check_against(topology, name, data, max((v.version for v in reg.versions(name)), default=0) + 1)
        mv = reg.register(name, data, fmt, training_data={"file": str(file.resolve())})
        if promote:
            reg.promote(name, mv.version)
        typer.echo(json.dumps({"model": name, "version": mv.version, "promoted": reg.promoted_version(name),
                               "format": fmt, **({"signature": signature} if signature else {})}))
    except DawnstreamError as e:
        _fail(e)


def _signature(data: bytes) -> dict[str, list[str]]:
    """An ONNX graph's inputs and outputs (``name: type[shape]``).

    Raises:
        ModelError: onnxruntime cannot load it.
    """
    from dawnstream.models.artifacts import onnx_session

    session = onnx_session(data)
    return {k: [f"{i.name}: {i.type}{list(i.shape)}" for i in items]
            for k, items in (("inputs", session.get_inputs()), ("outputs", session.get_outputs()))}


def _check_against(topology: Path, name: str, data: bytes, version: int) -> None:
    """Load ``data`` with every model of the topology's predict stages that serves ``name``.

    Raises:
        ModelError: no such model in the topology, or the artifact does not fit it (both signatures named).
        ConfigError: the topology is invalid.
    """
    from dawnstream.models.registry import ModelError
    from dawnstream.operators.serving.containers import RegistryVersions
    from dawnstream.operators.serving.predict import Predict
    from dawnstream.streams.config import load_topology

    checked = 0
    for op in load_topology(topology).build_chain().operators:
        if isinstance(op, Predict):
            for m in op.models:
                if isinstance(m, RegistryVersions) and m.model == name:
                    m._load(data, version)
                    checked += 1
    if not checked:
        raise ModelError(f"{topology} has no predict stage model serving {name!r}: nothing to check against")


@models_app.command("promote")
def models_promote(name: str, version: int, registry: RegistryOpt = None) -> None:
    """Serve ``version`` from now on (workers swap it in between batches, within about a second)."""
    try:
        mv = _registry(registry).promote(name, version)
        typer.echo(json.dumps({"model": name, "promoted": mv.version}))
    except DawnstreamError as e:
        _fail(e)


@models_app.command("rollback")
def models_rollback(name: str, registry: RegistryOpt = None) -> None:
    """Serve the previously promoted version again."""
    try:
        mv = _registry(registry).rollback(name)
        typer.echo(json.dumps({"model": name, "promoted": mv.version}))
    except DawnstreamError as e:
        _fail(e)


@models_app.command("retrain")
def models_retrain(
    topology: Annotated[Path, typer.Argument(help="A serving topology (with a `serve` stage).")],
    every: Annotated[int, typer.Option(min=1, help="Retrain after this many new ratings.")] = 10_000,
    min_ratings: Annotated[int, typer.Option(min=1, help="No model before this many ratings.")] = 1_000,
    max_idle: Annotated[float | None, typer.Option(help="Stop after this many seconds without input.")] = None,
    once: Annotated[bool, typer.Option(help="Train once on what the topic holds, then stop.")] = False,
) -> None:
    """Retrain θ from the feedback on the topology's topic, register and promote it; runs until Ctrl-C."""
    from dawnstream.streams.config import load_topology
    from dawnstream.streams.retrain import Retrainer

    try:
        topo = load_topology(topology)
        r = Retrainer(topo, every=every, min_ratings=min_ratings)
        with Progress(f"retrain: reading {topo.input.topic}", unit="ratings") as bar:
            versions = r.run(max_idle_s=2.0 if once else max_idle, max_versions=1 if once else None,
                             on_progress=bar.update)
        if once and not versions and len(r.data.labels) >= 1:
            versions = [r.train()]
    except DawnstreamError as e:
        _fail(e)
    except KeyboardInterrupt:
        versions = r.versions
    typer.echo(json.dumps({"ratings": len(r.data.labels),
                           "versions": [{k: v.version for k, v in vs.items()} for vs in versions]}))


@models_app.command("train-end-model")
def models_train_end_model(
    topology: Annotated[Path, typer.Argument(help="A labeling topology (a `label` stage with `end_model`).")],
    every: Annotated[int, typer.Option(min=1, help="Retrain after this many new labelled rows.")] = 2000,
    min_rows: Annotated[int, typer.Option(min=1, help="No model before this many usable rows.")] = 500,
    max_idle: Annotated[float | None, typer.Option(
        help="Stop after this many seconds without progress (with --once: 30 by default).")] = None,
    once: Annotated[bool, typer.Option(
        help="Wait until the labeling workers have labelled everything on the input topic, train once, stop.")] = False,
) -> None:
    """Train the noise-aware end model from the probabilistic labels topic; register and promote each fit."""
    from dawnstream.streams.config import load_topology
    from dawnstream.streams.end_model import EndModelTrainer

    try:
        topo = load_topology(topology)
        t = EndModelTrainer(topo, every=every, min_rows=min_rows)
        # --once: read until the workers' group has committed the whole input topic (not until a quiet
        # spell: a worker still starting on a slow machine looked like an empty topic)
        idle = (max_idle if max_idle is not None else 30.0) if once else max_idle
        with Progress(f"end model: reading {t.topic}", unit="rows") as bar:
            versions = t.run(max_idle_s=idle, train=not once, until_caught_up=once, on_progress=bar.update)
        if once:
            if len(t.rows.texts) < min_rows:
                behind = ("has committed nothing on it: is `dawnstream run " + str(topology) + "` running?"
                          if t.lag is None else f"had {t.lag} records left to label.")
                raise DawnstreamError(
                    f"only {len(t.rows.texts)} usable labelled rows on {t.topic} (--min-rows {min_rows}) after "
                    f"{idle:g} s without progress; the labeling group {topo.group_id} on input topic "
                    f"{topo.input.topic} {behind} Produce more rows, start the workers, or lower --min-rows.")
            versions = [t.train()]
    except DawnstreamError as e:
        _fail(e)
    except KeyboardInterrupt:
        versions = t.versions
    typer.echo(json.dumps({"rows": len(t.rows.texts), "model": t.name,
                           "versions": [{"version": v.version, **v.metrics} for v in versions]}))


def predict(
    topology: Annotated[Path, typer.Argument(help="The serving topology (its topics and bootstrap).")],
    request: Annotated[str, typer.Argument(help='JSON request, e.g. \'{"user_id": 196, "item_id": 242}\'.')],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the reply.")] = 30.0,
    reply_topic: Annotated[str | None, typer.Option(help="Reply topic (default: the topology's output).")] = None,
    feedback_for: Annotated[str | None, typer.Option(
        help="Send REQUEST as feedback for this correlation-id (a reply's correlation_id) to the topology's "
             "feedback topic, and wait for nothing: refused feedback goes to the dead-letter topic.")] = None,
) -> None:
    """Send one request (or feedback, with a label) through Kafka and print the reply as JSON."""
    from dawnstream.streams.config import load_topology
    from dawnstream.streams.request_reply import PredictClient

    try:
        row = json.loads(request)
    except json.JSONDecodeError as e:
        _fail(DawnstreamError(f"the request is not JSON ({e}); e.g. '{{\"user_id\": 196, \"item_id\": 242}}'"))
    if not isinstance(row, dict):
        _fail(DawnstreamError("the request must be a JSON object"))
    try:
        t = load_topology(topology)
        if feedback_for is not None and t.input.feedback_topic is None:
            raise DawnstreamError(f"{topology} has no input.feedback_topic: send feedback as a request with its "
                                  "label, under the request's correlation-id")
        with PredictClient(t.kafka.bootstrap, t.input.topic, reply_topic or t.outputs[0].topic,
                           key_field=t.input.key_field or "user_id", settings=t.kafka.settings) as client:
            if feedback_for is not None:
                client.send(row, correlation_id=feedback_for, reply=False, topic=t.input.feedback_topic)
                client.flush()
                typer.echo(json.dumps({"sent": "feedback", "correlation_id": feedback_for,
                                       "topic": t.input.feedback_topic}))
                return
            reply = client.request(row, timeout)
    except DawnstreamError as e:
        _fail(e)
    typer.echo(json.dumps(reply))
