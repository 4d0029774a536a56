"""The ``label`` stage on Rotten Tomatoes snippets: online label model, LF statistics, batching-independent
labels, snapshot/restore, failing LFs, bad config."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from propkit import examples

from dawnstream.errors import ConfigError
from dawnstream.operators.labeling.label import Label
from dawnstream.operators.labeling.label_model import fit_matrix_completion
from dawnstream.operators.labeling.lf import ABSTAIN, keyword_lf, labeling_function
from dawnstream.operators.labeling.votes import VoteStats
from dawnstream.operators.registry import build_operator
from dawnstream.sources import rotten_tomatoes

# Results promised bit for bit: `make test` runs these again under a second OpenBLAS kernel.
pytestmark = pytest.mark.bitexact

SENTIMENT = ["dawnstream.operators.labeling.lfs.sentiment"]


@pytest.fixture(scope="module")
def reviews() -> pa.Table:
    return rotten_tomatoes().slice(0, 3000)


def stage(**kw) -> Label:
    return Label(lfs=SENTIMENT, classes=["rotten", "fresh"], refit_every=kw.pop("refit_every", 500), **kw)


def one_batch(table: pa.Table) -> pa.RecordBatch:
    return table.combine_chunks().to_batches()[0]


def run(op: Label, table: pa.Table, cuts: list[int]) -> pa.Table:
    edges = [0, *sorted(set(cuts)), table.num_rows]
    out = []
    for a, b in zip(edges, edges[1:], strict=False):
        if b > a:
            out.extend(op.process(one_batch(table.slice(a, b - a))))
    return pa.Table.from_batches(out)


def test_each_row_is_labelled_by_the_model_fitted_on_the_rows_before_it(reviews) -> None:
    op = stage()
    got = run(op, reviews, [700, 1800])
    L = op.label_matrix(one_batch(reviews))[0].astype(np.int64)
    stats = VoteStats(L.shape[1], 2)
    stats.add(L[:2500])
    model = fit_matrix_completion(stats, [0.5, 0.5], seed=0)
    probs = np.array(got.column("probs").to_pylist())
    assert np.allclose(probs[2500:], model.predict_proba(L[2500:]), atol=1e-12)
    assert op.refits == 6 and op.rows == 3000
    assert got.column("id").to_pylist() == reviews.column("id").to_pylist()
    summary = {r["lf"]: r for r in op.summary()}
    assert summary["pan_words"]["coverage"] == pytest.approx(float((L[:, 7] != ABSTAIN).mean()))


@settings(max_examples=examples(8), deadline=None)
@given(st.lists(st.integers(1, 2999), max_size=12))
def test_labels_do_not_depend_on_where_batches_are_cut(reviews, cuts) -> None:
    whole = run(stage(refit_every=400), reviews, [])
    cut = run(stage(refit_every=400), reviews, cuts)
    assert cut.column("probs").to_pylist() == whole.column("probs").to_pylist()
    assert cut.column("review").to_pylist() == whole.column("review").to_pylist()


def sized(n_rows: int, size: int) -> list[int]:
    return list(range(size, n_rows, size))


@pytest.mark.parametrize("model,decay", [("matrix_completion", 0.0), ("matrix_completion", 0.1),
                                         ("dependency_aware", 0.05), ("triplets", 0.1)])
def test_probabilities_are_the_same_bits_for_batches_of_1_7_333_and_all_rows(reviews, model, decay) -> None:
    # == on float64, not allclose: a replay after a crash re-cuts the stream and must label it identically.
    rows = reviews.slice(0, 900)
    outs = {size: run(stage(model=model, decay=decay, refit_every=200, class_balance="estimate"), rows,
                      sized(rows.num_rows, size))
            for size in (1, 7, 333, rows.num_rows)}
    whole = outs[rows.num_rows]
    assert model in whole.column("labeled_by").to_pylist()[-100:]  # the fitted model labelled the tail
    for size, out in outs.items():
        for col in ("probs", "review", "labeled_by", "label"):
            assert out.column(col).to_pylist() == whole.column(col).to_pylist(), (size, col)


def test_vote_sums_do_not_depend_on_how_rows_were_added_even_when_decayed() -> None:
    rng = np.random.default_rng(7)
    L = rng.integers(-1, 3, size=(5000, 6)).astype(np.int8)

    def stats(size: int) -> VoteStats:
        s = VoteStats(6, 3)
        for start in range(0, len(L), 1000):  # decay at fixed row counts, rows added in `size` chunks
            block = L[start:start + 1000]
            for a in range(0, len(block), size):
                s.add(block[a:a + size])
            s.scale(0.9)
        return s

    ref = stats(1000)
    for size in (1, 7, 333):
        got = stats(size)
        assert got.n == ref.n and np.array_equal(got.S, ref.S)
        again = VoteStats.from_state(got.state())
        assert again.n == got.n and np.array_equal(again.S, got.S)


def test_a_restored_snapshot_continues_as_if_nothing_happened(reviews) -> None:
    ref = run(stage(), reviews, [1234])
    first = stage()
    head = run(first, reviews.slice(0, 1234), [])
    second = stage()
    second.restore(first.snapshot())
    tail = run(second, reviews.slice(1234), [])
    assert pa.concat_tables([head, tail]).column("probs").to_pylist() == ref.column("probs").to_pylist()
    assert second.summary() == stage_after(reviews).summary()


def stage_after(reviews: pa.Table) -> Label:
    op = stage()
    run(op, reviews, [])
    return op


def test_rows_where_every_lf_abstains_get_the_prior_and_are_flagged() -> None:
    op = stage(class_balance=[0.42, 0.58], refit_every=50)
    texts = ["A wonderful, moving and brilliant film!", "Dull, tedious and boring.", "The film runs 93 minutes."] * 40
    out = run(op, pa.table({"id": list(range(len(texts))), "text": texts}), [])
    last = out.slice(100).to_pylist()
    neutral = [r for r in last if r["text"].startswith("The film")]
    assert neutral and all(r["abstained"] for r in neutral)
    assert all(r["probs"] == pytest.approx([0.42, 0.58]) for r in neutral)
    assert all(r["label_name"] == "fresh" for r in last if r["text"].startswith("A wonderful"))
    assert all(r["label_name"] == "rotten" for r in last if r["text"].startswith("Dull"))


@labeling_function(name="fragile")
def fragile(row):
    if "explode" in row["text"]:
        raise RuntimeError("boom")
    return 1


def test_an_lf_that_raises_abstains_on_that_row_and_counts_the_error(monkeypatch) -> None:
    import sys
    import types

    mod = types.ModuleType("fragile_lfs")
    mod.LFS = [fragile]
    monkeypatch.setitem(sys.modules, "fragile_lfs", mod)
    op = Label(lfs=["fragile_lfs"], classes=["no", "yes"], model="majority")
    out = run(op, pa.table({"id": [1, 2, 3], "text": ["fine", "explode here", "fine too"]}), [])
    assert out.column("votes").to_pylist() == [[1], [-1], [1]]
    assert out.num_rows == 3 and op.summary()[0]["errors"] == 1


def test_gold_rows_move_the_accuracies_and_the_prior_not_the_model(reviews) -> None:
    y = reviews.column("label").to_numpy()
    dev = np.arange(len(y)) % 4 == 0  # every fourth row comes with its gold class
    table = reviews.append_column("gold", pa.array(np.where(dev, y, 0), pa.int8(), mask=~dev))
    op = stage(gold="gold", class_balance="estimate")
    out = run(op, table, [1000])
    votes = np.array(out.column("votes").to_pylist())
    row = {r["lf"]: r for r in op.summary()}["praise_words"]
    covered = (votes[:, 6] != -1) & dev
    assert row["emp_accuracy"] == pytest.approx(float((votes[covered, 6] == y[covered]).mean()))
    assert row["coverage"] == pytest.approx(float((votes[~dev, 6] != -1).mean()))
    assert op.votes.n == (~dev).sum() and op.stats.n == (~dev).sum()
    n0, n1 = np.sum(y[dev] == 0), np.sum(y[dev] == 1)
    assert op._class_prior() == pytest.approx([(n0 + 1) / (n0 + n1 + 2), (n1 + 1) / (n0 + n1 + 2)])
    assert not any(out.filter(pa.array(dev)).column("review").to_pylist())


def test_the_review_queue_takes_the_least_certain_share_of_rows(reviews) -> None:
    op = stage(review_share=0.05)
    out = run(op, reviews, [])
    later = out.slice(1000)
    flagged = later.filter(later.column("review"))
    covered = later.filter(pa.compute.invert(later.column("abstained")))
    share = flagged.num_rows / covered.num_rows
    assert 0.02 < share < 0.12
    margin = lambda t: np.abs(np.diff(np.array(t.column("probs").to_pylist()), axis=1))[:, 0]  # noqa: E731
    assert margin(flagged).max() < np.median(margin(covered))


@pytest.mark.parametrize(("params", "path", "says"), [
    ({"lfs": ["no.such.module"], "classes": ["a", "b"]}, "stages.0.lfs.0", "cannot import LF module"),
    ({"lfs": ["json"], "classes": ["a", "b"]}, "stages.0.lfs.0", "standard library"),
    ({"lfs": ["this"], "classes": ["a", "b"]}, "stages.0.lfs.0", "standard library"),  # never imported
    ({"lfs": ["dawnstream.operators"], "classes": ["a", "b"]}, "stages.0.lfs.0", "defines no labeling function"),
    ({"lfs": ["os; rm -rf"], "classes": ["a", "b"]}, "stages.0.lfs.0", "neither a module import path"),
    ({"lfs": SENTIMENT, "classes": ["a"]}, "stages.0.classes", "at least two"),
    ({"lfs": SENTIMENT, "classes": ["a", "b"], "model": "em"}, "stages.0.model", "expected one of"),
    ({"lfs": SENTIMENT, "classes": ["a", "b"], "class_balance": [1, 0]}, "stages.0.class_balance", "positive"),
    ({"lfs": SENTIMENT, "classes": ["a", "b", "c"], "model": "triplets"}, "stages.0.model", "two classes"),
])
def test_bad_config_names_the_key(params, path, says) -> None:
    with pytest.raises(ConfigError) as e:
        build_operator("label", params, None, "stages.0")
    assert e.value.path == path and says in e.value.message


def test_a_promoted_end_model_labels_the_rows_no_lf_covers(reviews, tmp_path) -> None:
    from dawnstream.models.registry import Registry
    from dawnstream.models.text_model import HashedTextModel

    registry = Registry(tmp_path / "registry")
    op = stage(end_model="reviews-end", registry=str(registry.root), refresh_s=0.0)
    before = run(op, reviews.slice(0, 500), [])
    assert set(before.filter(before.column("abstained")).column("labeled_by").to_pylist()) == {"prior"}
    texts = reviews.column("text").to_pylist()[:2000]
    model = HashedTextModel.fit(texts, np.eye(2)[reviews.column("label").to_numpy()[:2000]])
    registry.promote("reviews-end", registry.register("reviews-end", model.to_npz(), "npz").version)
    after = run(op, reviews.slice(500, 1000), [])
    uncovered = after.filter(after.column("abstained"))
    assert uncovered.num_rows > 100 and set(uncovered.column("labeled_by").to_pylist()) == {"end_model:1"}
    expected = model.predict_proba(uncovered.column("text").to_pylist())
    assert np.allclose(np.array(uncovered.column("probs").to_pylist()), expected)
    covered = after.filter(pa.compute.invert(after.column("abstained")))
    assert set(covered.column("labeled_by").to_pylist()) == {"matrix_completion"}


@pytest.mark.parametrize("bad", ["three classes", "wrong width", "not finite", "not npz"])
def test_a_malformed_end_model_is_refused_once_and_the_last_good_one_stays(reviews, tmp_path, caplog, bad) -> None:
    import io
    import logging

    from dawnstream.models.registry import Registry
    from dawnstream.models.text_model import HashedTextModel

    registry = Registry(tmp_path / "registry")
    texts = reviews.column("text").to_pylist()[:1000]
    good = HashedTextModel.fit(texts, np.eye(2)[reviews.column("label").to_numpy()[:1000]], n_features=1 << 12)
    registry.promote("end", registry.register("end", good.to_npz(), "npz").version)
    op = stage(end_model="end", registry=str(registry.root), refresh_s=0.0)
    run(op, reviews.slice(0, 300), [])
    with np.load(io.BytesIO(good.to_npz())) as z:
        arrays = {k: z[k] for k in z.files}
    if bad == "three classes":  # loads and predicts, but 3 probabilities for a 2-class stage
        arrays = {"coef": np.zeros((3, 1 << 12), np.float32), "intercept": np.zeros(3),
                  "settings": np.array([3, 1 << 12, 2])}
    elif bad == "wrong width":
        arrays["coef"] = arrays["coef"][:, :100]
    elif bad == "not finite":
        arrays["intercept"] = np.array([np.inf])
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    registry.promote("end", registry.register("end", b"junk" if bad == "not npz" else buf.getvalue(), "npz").version)
    with caplog.at_level(logging.WARNING):
        out = [run(op, reviews.slice(300 + 100 * i, 100), []) for i in range(5)]
    uncovered = pa.concat_tables(out).filter(pa.concat_tables(out).column("abstained"))
    assert uncovered.num_rows and set(uncovered.column("labeled_by").to_pylist()) == {"end_model:1"}
    assert sum("label.end_model_refused" in r.getMessage() for r in caplog.records) == 1


def test_the_shipped_lfs_vote_as_their_row_wise_reference(reviews) -> None:
    """Vectorized (pyarrow.compute, shared tokens) and plain-Python row-wise forms of the twelve sentiment LFs."""
    from dawnstream.operators.labeling.lf import LFBatch
    from dawnstream.operators.labeling.lfs.sentiment import LFS, row_wise

    batch = LFBatch(one_batch(reviews))
    for fast, slow in zip(LFS, row_wise(), strict=True):
        assert fast.name == slow.name
        votes = fast.apply(batch)[0]
        assert np.array_equal(votes, slow.apply(batch)[0]), fast.name
        assert (votes != ABSTAIN).any(), fast.name


def test_an_lf_module_is_checked_before_it_is_imported(tmp_path, monkeypatch, capsys) -> None:
    import sys

    sys.modules.pop("this", None)
    with pytest.raises(ConfigError, match="standard library"):
        build_operator("label", {"lfs": ["this"], "classes": ["a", "b"]}, None, "stages.0")
    assert "this" not in sys.modules and "Zen of Python" not in capsys.readouterr().out
    (tmp_path / "stray_lfs.py").write_text("raise SystemExit('ran before the check')\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # on sys.path, but not an installed distribution
    with pytest.raises(ConfigError, match="trusted code") as e:
        build_operator("label", {"lfs": ["stray_lfs"], "classes": ["a", "b"]}, None, "stages.0")
    assert e.value.path == "stages.0.lfs.0" and "stray_lfs" not in sys.modules


@pytest.mark.parametrize(("bad", "says"), [
    (keyword_lf("earn_words", ["profit"], label="earn"), "labeling function 'earn_words' votes 'earn'"),
    (keyword_lf("ninth", ["profit"], label=8), "labeling function 'ninth' votes 8: expected a class index 0..7"),
])
def test_an_lf_voting_a_label_that_is_no_class_is_refused_at_load(monkeypatch, bad, says) -> None:
    import sys
    import types

    mod = types.ModuleType("wrong_label_lfs")
    mod.LFS = [bad]
    monkeypatch.setitem(sys.modules, "wrong_label_lfs", mod)
    with pytest.raises(ConfigError) as e:
        Label(lfs=["wrong_label_lfs"], classes=[f"c{k}" for k in range(8)], model="majority", _path="stages.0.op")
    assert e.value.path == "stages.0.lfs" and says in e.value.message
    with pytest.raises(ConfigError, match="unique"):
        Label(lfs=["dawnstream.operators.labeling.lfs.sentiment"], classes=["rotten", "rotten"])
