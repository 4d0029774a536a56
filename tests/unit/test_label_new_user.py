"""Labeling as a new user meets it (issue 32): an LF file next to the topology, `dawnstream lfs`, uncovered
rows, LFs broken in their definition, and the dependency-aware model's gate - on the five-class `debates` set
and Rotten Tomatoes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from dawnstream.cli import app
from dawnstream.errors import ConfigError
from dawnstream.operators.labeling.label import FIRST_ROWS, Label, load_lfs
from dawnstream.operators.labeling.label_model import (
    MIN_HELD_OUT,
    fit_dependency_aware,
    fit_matrix_completion,
    held_out_accuracy,
)
from dawnstream.operators.labeling.lf import LFBatch
from dawnstream.operators.labeling.votes import VoteStats
from dawnstream.sources import SPEAKERS, debates, rotten_tomatoes
from dawnstream.streams.config import load_topology
from dawnstream.streams.local_runner import LocalRunner

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "debates" / "speakers.yaml"
LF_FILE = """
from dawnstream.operators.labeling.lf import ABSTAIN, keyword_lf, labeling_function
good = keyword_lf("good", ["good", "great"], label=1)
bad = keyword_lf("bad", ["bad", "awful"], label=0)

@labeling_function(name="exclaims")
def exclaims(row):
    return 1 if "!" in row["text"] else ABSTAIN
"""


def topology(tmp_path: Path, lfs: list[str], **stage) -> Path:
    doc = {"name": "t", "input": {"topic": "labels.test.rows.v1"}, "outputs": [{"topic": "labels.test.out.v1"}],
           "stages": [{"op": "label", "lfs": lfs, "classes": ["neg", "pos"], "text": "text", "id": "id",
                       "model": "majority", **stage}]}
    p = tmp_path / "job" / "t.yaml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(yaml.safe_dump(doc))
    return p


def rows(*texts: str) -> pa.Table:
    return pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": list(texts)})


def test_an_lf_file_next_to_the_topology_loads_from_any_working_directory(tmp_path, monkeypatch) -> None:
    path = topology(tmp_path, ["my_lfs.py"])
    (path.parent / "my_lfs.py").write_text(LF_FILE)
    monkeypatch.chdir(tmp_path)  # not the topology's folder
    topo = load_topology(path)
    out = LocalRunner(topo, encode=False).run_table(rows("good film!", "awful", "meh")).table()
    assert out.column("votes").to_pylist() == [[1, -1, 1], [-1, 0, -1], [-1, -1, -1]]
    assert [lf.name for lf in topo.build_chain().operators[0].lfs] == ["good", "bad", "exclaims"]


@pytest.mark.parametrize("entry", ["r8_lfs", "./r8_lfs.py"])
def test_a_missing_lf_module_says_both_ways_to_list_one(tmp_path, entry) -> None:
    with pytest.raises(ConfigError) as e:
        load_topology(topology(tmp_path, [entry]))
    assert e.value.path == "stages.0.lfs.0"
    assert "relative to the topology" in e.value.message and "pip install -e ." in e.value.message


def test_the_cli_error_keeps_its_bracketed_examples(tmp_path) -> None:
    res = CliRunner().invoke(app, ["process", str(topology(tmp_path, ["r8_lfs"])), "x.csv", "--out", "o.csv"])
    assert res.exit_code == 2 and "lfs: [./my_lfs.py]" in res.output.replace("\n", " ")


def test_uncovered_rows_abstain_unless_the_prior_is_asked_for(tmp_path) -> None:
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "my_lfs.py").write_text(LF_FILE)
    table = rows("good!", "meh", "bad")
    for uncovered, label, name in (("abstain", -1, None), ("prior", 0, "neg")):
        topo = load_topology(topology(tmp_path, ["my_lfs.py"], uncovered=uncovered, class_balance=[0.6, 0.4]))
        out = LocalRunner(topo, encode=False).run_table(table).table().to_pylist()
        assert [r["abstained"] for r in out] == [False, True, False]
        assert (out[1]["label"], out[1]["label_name"]) == (label, name)
        assert out[1]["probs"] == pytest.approx([0.6, 0.4])
        assert (out[0]["label"], out[2]["label"]) == (1, 0)
    with pytest.raises(ConfigError) as e:
        load_topology(topology(tmp_path, ["my_lfs.py"], uncovered="zero"))
    assert e.value.path == "stages.0.uncovered"


def broken_lf_stage(tmp_path: Path, body: str) -> Label:
    (tmp_path / "lfs_broken.py").write_text(LF_FILE + body)
    return Label(lfs=[str(tmp_path / "lfs_broken.py")], classes=["neg", "pos"], model="majority")


def test_an_lf_failing_on_every_one_of_the_first_rows_stops_the_job_naming_it(tmp_path) -> None:
    op = broken_lf_stage(tmp_path, '\n@labeling_function(name="typo")\ndef typo(row):\n    return row["txt"]\n')
    op.process(rows("good").to_batches()[0])  # a first batch of one row (a worker before its data) goes on
    with pytest.raises(ConfigError) as e:
        op.process(rows(*["fine"] * FIRST_ROWS).to_batches()[0])
    assert e.value.path == "stages.lfs" and "typo: KeyError: 'txt'" in e.value.message
    assert op.rows == 1  # the batch that stopped it moved no state


def test_an_lf_failing_on_some_rows_is_counted_and_the_stream_goes_on(tmp_path) -> None:
    op = broken_lf_stage(tmp_path, '\n@labeling_function(name="picky")\ndef picky(row):\n'
                                   '    return 1 if row["text"].startswith("ok") else row["txt"]\n')
    op.process(rows(*(["ok"] + ["nope"] * (2 * FIRST_ROWS))).to_batches()[0])
    row = {r["lf"]: r for r in op.summary()}["picky"]
    assert row["errors"] == 2 * FIRST_ROWS and row["last_error"] == "KeyError: 'txt'"


def test_lfs_prints_the_table_and_scores_on_the_five_class_debates() -> None:
    res = CliRunner().invoke(app, ["lfs", str(EXAMPLE), "debates", "--gold", "speaker", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    table = debates()
    lfs = load_lfs([str(EXAMPLE.parent / "speaker_lfs.py")])
    L = np.concatenate([np.stack([lf.apply(LFBatch(b))[0] for lf in lfs], axis=1)
                        for b in table.to_batches(max_chunksize=1000)])
    y = table.column("label").to_numpy().astype(np.int64)
    for j, row in enumerate(doc["lfs"]):  # snorkel's LFAnalysis definitions, from the label matrix
        voted = L[:, j] != -1
        assert row["lf"] == lfs[j].name and row["coverage"] == pytest.approx(voted.mean())
        assert row["correct"] == int((L[voted, j] == y[voted]).sum())
        assert row["emp_accuracy"] == pytest.approx((L[voted, j] == y[voted]).mean())
        assert 0.0 <= row["learned_accuracy"] <= 1.0
    covered = (L != -1).any(axis=1)
    scores = doc["scores"]
    assert scores["gold_rows"] == len(y) and scores["covered_gold_rows"] == int(covered.sum())
    stats = VoteStats(len(lfs), len(SPEAKERS))
    stats.add(L)
    full = fit_matrix_completion(stats, None, seed=0).predict_proba(L[covered]).argmax(axis=1)
    assert scores["matrix_completion"]["accuracy"] == pytest.approx((full == y[covered]).mean(), abs=1e-4)
    assert scores["matrix_completion"]["accuracy"] > scores["online"]["accuracy"] - 0.05 > 0.5


def test_process_prints_the_lf_table(tmp_path) -> None:
    res = CliRunner().invoke(app, ["process", str(EXAMPLE), "debates", "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 0, res.output
    assert "labeling functions" in res.stderr and "talks_of_donald" in res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["rows_out"] == 1122


@pytest.fixture(scope="module")
def sentiment_votes() -> tuple[np.ndarray, np.ndarray]:
    table = rotten_tomatoes()
    lfs = load_lfs(["dawnstream.operators.labeling.lfs.sentiment"])
    L = np.concatenate([np.stack([lf.apply(LFBatch(b))[0] for lf in lfs], axis=1)
                        for b in table.to_batches(max_chunksize=2000)])
    return L, table.column("label").to_numpy().astype(np.int64)


@pytest.fixture(scope="module")
def fits(sentiment_votes):  # noqa: ANN201
    """The statistics of the first 8,000 rows, plain matrix completion and the dependency rule's model on them."""
    L, y = sentiment_votes
    stats = VoteStats(L.shape[1], 2)
    stats.add(L[:8000])
    return stats, fit_matrix_completion(stats, None, seed=1), fit_dependency_aware(stats, None, seed=1, gate=False)


def test_the_dependency_aware_model_is_plain_matrix_completion_without_enough_held_out_rows(sentiment_votes,
                                                                                             fits) -> None:
    L, y = sentiment_votes
    stats, plain, rule = fits
    assert rule.dependent  # the rule finds pairs on these lexicon LFs
    for held in (None, (L[8000:8050], y[8000:8050])):
        gated = fit_dependency_aware(stats, None, seed=1, held_out=held)
        assert gated.dependent is None and np.array_equal(gated.mu, plain.mu)
        assert gated.held_out_scores["needed"] == MIN_HELD_OUT


def test_the_gate_keeps_whichever_model_is_better_on_the_held_out_rows(sentiment_votes, fits) -> None:
    L, y = sentiment_votes
    stats, plain, rule = fits
    honest, liar = (L[8000:10000], y[8000:10000]), (L[8000:10000], 1 - y[8000:10000])
    for held in (honest, liar):
        gated = fit_dependency_aware(stats, None, seed=1, held_out=held)
        best = max(held_out_accuracy(plain, *held)[0], held_out_accuracy(rule, *held)[0])
        assert held_out_accuracy(gated, *held)[0] == best
    # gold that says the opposite of every LF makes the down-weighting look worse: plain wins
    assert fit_dependency_aware(stats, None, seed=1, held_out=liar).dependent is None


def test_the_stage_gates_on_its_gold_rows_and_keeps_them_in_its_snapshot(sentiment_votes) -> None:
    table = rotten_tomatoes().slice(0, 3000)
    gold = pa.array([r if i % 10 == 0 else None for i, r in enumerate(table.column("label").to_pylist())], pa.int8())
    batch = table.append_column("gold", gold).select(["id", "text", "gold"]).combine_chunks().to_batches()[0]
    op = Label(lfs=["dawnstream.operators.labeling.lfs.sentiment"], classes=["rotten", "fresh"],
               model="dependency_aware", gold="gold", refit_every=1000)
    op.process(batch)
    assert op.params is not None and op.params.held_out_scores["rows"] >= MIN_HELD_OUT
    assert len(op._dev_y) == 300
    again = Label(lfs=["dawnstream.operators.labeling.lfs.sentiment"], classes=["rotten", "fresh"],
                  model="dependency_aware", gold="gold", refit_every=1000)
    again.restore(op.snapshot())
    assert np.array_equal(again._dev_L, op._dev_L) and np.array_equal(again._dev_y, op._dev_y)
