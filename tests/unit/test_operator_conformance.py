"""One conformance suite over every operator in ``operators.registry`` (as river runs ``river/checks``
over every estimator).

For each registered kind, with the example below: snapshot/restore is transparent, an empty batch
is fine, results do not depend on where batches are cut, ``required_columns`` is honest (those
columns suffice, and each one is needed), and values of the wrong type raise a data error (what
the runner dead-letters) rather than anything that would stop the worker.

A kind registered without an example fails ``test_every_registered_operator_has_an_example``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest

from dawnstream.operators.base import Chain
from dawnstream.operators.registry import OPERATORS, build_chain
from dawnstream.streams.processor import OPERATOR_DATA_ERRORS

VOLATILE = {"emit_time", "latency_ms", "reference_ms"}  # wall-clock columns


def rows(n: int, seed: int = 7, start: int = 0) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    x[rng.random(n) < 0.03] += 8  # some outliers
    k = np.array(["a", "b", "c", "d", "e"])[rng.integers(0, 5, n)]
    x[k == "e"] += 2  # ... more of them under k = e
    t = 1_700_000_000_000 + (start + np.arange(n)) * 250
    return pa.record_batch({"x": x, "k": k, "t": pa.array(t, pa.timestamp("ms")),
                            "is_outlier": x > 2.5})


def stream(n: int = 3000) -> list[pa.RecordBatch]:
    return [rows(1000, seed, seed * 1000) for seed in range(n // 1000)]


def summaries() -> list[pa.RecordBatch]:
    """What ``explain`` with ``output: summary`` emits: the input of ``merge_explanations``."""
    chain = build_chain([("explain", {"attributes": ["k"], "emit_every": 500, "period": 250, "min_support": 0.05,
                                      "min_ratio": 1.5, "output": "summary"}, None)])
    out = [b for batch in stream() for b in chain.process(batch)]
    table = pa.Table.from_batches(out)
    return [b for b in table.to_batches(max_chunksize=2)]


def ratings() -> list[pa.RecordBatch]:
    """Feedback and requests for ``serve`` (a feedback row carries a rating; requests a reply-to)."""
    rng = np.random.default_rng(3)
    n = 1500
    is_request = rng.random(n) < 0.3
    rating = np.where(is_request, np.nan, rng.integers(1, 6, n).astype(float))
    table = pa.table({"correlation_id": [f"c{i}" for i in range(n)],
                      "reply_to": pa.array(np.where(is_request, "replies", None), pa.string()),
                      "user_id": rng.integers(1, 60, n), "item_id": rng.integers(1, 90, n),
                      "rating": pa.array(rating, from_pandas=True)})
    return table.to_batches(max_chunksize=500)


def reviews() -> list[pa.RecordBatch]:
    """Review snippets for ``label`` (with an id; every fifth row with its gold class)."""
    from dawnstream.sources import rotten_tomatoes

    t = rotten_tomatoes().slice(0, 1500)
    y = t.column("label").to_numpy()
    dev = np.arange(t.num_rows) % 5 == 0
    t = t.select(["id", "text"]).append_column("gold", pa.array(np.where(dev, y, 0), pa.int8(), mask=~dev))
    return t.combine_chunks().to_batches(max_chunksize=500)


def review_requests() -> list[pa.RecordBatch]:
    """Requests for ``predict`` (review text and a source key) and, 40 rows later, their gold labels as
    feedback naming the request's correlation-id; every row with its Kafka timestamp."""
    from dawnstream.sources import rotten_tomatoes

    t = rotten_tomatoes().slice(2000, 600)
    texts, gold = t.column("text").to_pylist(), t.column("label").to_pylist()
    out: list[dict] = []
    for i, text in enumerate(texts):
        out.append({"correlation_id": f"r{i}", "reply_to": "replies" if i % 3 else None, "text": text,
                    "source": f"s{i % 7}", "label": None})
        if i >= 40:
            out.append({"correlation_id": f"r{i - 40}", "reply_to": None, "text": None, "source": None,
                        "label": ["rotten", "fresh"][gold[i - 40]]})
    for k, r in enumerate(out):
        r["kafka_timestamp_ms"] = 1_700_000_000_000 + 100 * k
    return pa.Table.from_pylist(out).to_batches(max_chunksize=400)


def _predict_registry() -> str:
    """A registry holding a text model trained on other reviews (the labeling pipeline's end model kind)."""
    from dawnstream.models.registry import Registry
    from dawnstream.models.text_model import HashedTextModel
    from dawnstream.sources import rotten_tomatoes

    root = tempfile.mkdtemp(prefix="dawnstream-predict-")
    t = rotten_tomatoes().slice(0, 1500)
    y = np.asarray(t.column("label").to_pylist())
    m = HashedTextModel.fit(t.column("text").to_pylist(), np.eye(2)[y], n_features=1 << 14)
    reg = Registry(root)
    reg.promote("reviews", reg.register("reviews", m.to_npz(), "npz").version)
    return root


def camera_frames() -> list[pa.RecordBatch]:
    """JPEG frames of vtest from two cameras, interleaved (the frames codec's columns)."""
    from dawnstream.video_source import jpeg, read_frames, vtest

    rows = [(cam, i, jpeg(f)) for i, _, f in read_frames(vtest(), stop=40) for cam in ("lawn", "gate")]
    table = pa.table({"camera_id": [r[0] for r in rows], "frame_index": [r[1] for r in rows],
                      "image": pa.array([r[2] for r in rows], pa.binary())})
    return table.to_batches(max_chunksize=20)


def few_frames() -> list[pa.RecordBatch]:
    """Six vtest frames in batches of two (the reference model costs ~50 ms a frame)."""
    return [b.slice(0, 4) for b in camera_frames()[:3]]


CASCADE_REGISTRY = tempfile.mkdtemp(prefix="dawnstream-cascade-")  # shared: a retrain finds the same model

SERVE = {"models": [{"name": "velox", "kind": "velox", "model": "absent-theta"}, {"kind": "online_mf"},
                    {"kind": "mean"}], "rating_range": [1, 5], "registry": "/nonexistent/dawnstream-registry"}
PREDICT = {"features": {"text": "string", "source": "category"}, "task": "binary", "classes": ["rotten", "fresh"],
           "models": [{"name": "text", "kind": "text_model", "model": "reviews"},
                      {"name": "personal", "kind": "online", "over": "text", "key": "source"}, {"kind": "prior"}],
           "registry": _predict_registry(), "slo_ms": 10_000}

# kind -> (parameters, input batches, a column whose values may be made the wrong type, or None)
EXAMPLES: dict[str, tuple[dict, Callable[[], list[pa.RecordBatch]], str | None]] = {
    "filter": ({"expr": "x > 0.5 and k != 'a'"}, stream, "x"),
    "derive": ({"columns": {"y": "x * 2 + 1", "big": "abs(x) > 2"}}, stream, "x"),
    "select": ({"columns": ["k", "x"], "rename": {"x": "value"}}, stream, None),
    "window_count": ({"key": "k", "time": "t", "size": "1m"}, stream, "t"),
    "group_by": ({"key": "k"}, stream, None),  # any type of key: its text decides the partition
    "classify": ({"metrics": "x", "warmup": 200, "period": 500, "reservoir": 300, "score_reservoir": 300},
                 stream, "x"),
    "explain": ({"attributes": ["k"], "emit_every": 700, "period": 300, "min_support": 0.05, "min_ratio": 1.5},
                stream, "is_outlier"),
    "merge_explanations": ({"attributes": ["k"], "min_support": 0.05, "min_ratio": 1.5}, summaries, "O"),
    # serve answers values of the wrong type with an error reply (the caller must not wait), never raises
    "serve": (SERVE, ratings, None),
    "predict": (PREDICT, review_requests, None),
    "forward_feedback": ({"label_field": "label", "key_field": "source"}, review_requests, None),
    "difference": ({"threshold": 60.0, "against": "reference", "reference_frames": 5, "blocks": [2, 2]},
                   camera_frames, "image"),
    "detect": ({"detector": {"kind": "hog"}, "query": {"region": [0, 380, 560, 576]}}, few_frames, "image"),
    "cascade": ({"detector": {"kind": "ssdlite"}, "query": {"min_count": 3}, "bootstrap": 8, "min_per_class": 1,
                 "block": 2, "swap_after": 2, "epochs": 1, "grid": [{"convs": 1, "filters": 16, "dense": 32}],
                 "sample": 0.2, "registry": CASCADE_REGISTRY}, camera_frames, "image"),
    "label": ({"lfs": ["dawnstream.operators.labeling.lfs.sentiment"], "classes": ["rotten", "fresh"],
               "gold": "gold", "refit_every": 300, "class_balance": "estimate"}, reviews, "gold"),
}
KINDS = sorted(EXAMPLES)


def chain(kind: str) -> Chain:
    return build_chain([(kind, EXAMPLES[kind][0], None)])


def comparable(out: list[pa.RecordBatch]) -> list[dict]:
    """Rows without wall-clock columns, NaN made equal to itself (warm-up rows have no score)."""
    return [{k: "NaN" if isinstance(v, float) and v != v else v for k, v in r.items() if k not in VOLATILE}
            for b in out for r in b.to_pylist()]


def run(c: Chain, batches: list[pa.RecordBatch]) -> list[dict]:
    return comparable([b for batch in batches for b in c.process(batch)] + c.flush())


def test_every_registered_operator_has_an_example() -> None:
    assert sorted(OPERATORS) == KINDS, "give each registered operator kind an example in EXAMPLES"


@pytest.mark.parametrize("kind", KINDS)
def test_the_example_produces_something(kind: str) -> None:
    assert run(chain(kind), EXAMPLES[kind][1]())


@pytest.mark.bitexact  # `make test` runs it again under a second OpenBLAS kernel
@pytest.mark.parametrize("kind", KINDS)
def test_snapshot_and_restore_are_transparent(kind: str) -> None:
    batches = EXAMPLES[kind][1]()
    whole = run(chain(kind), batches)
    cut = len(batches) // 2
    first = chain(kind)
    before = [b for batch in batches[:cut] for b in first.process(batch)]
    resumed = chain(kind)
    resumed.restore(first.snapshot())
    after = run(resumed, batches[cut:])
    assert comparable(before) + after == whole


@pytest.mark.parametrize("kind", KINDS)
def test_an_empty_batch_changes_nothing(kind: str) -> None:
    batches = EXAMPLES[kind][1]()
    whole = run(chain(kind), batches)
    c = chain(kind)
    empty = batches[0].slice(0, 0)
    out = [r for b in c.process(empty) for r in b.to_pylist()]
    assert out == []
    assert run(c, [empty, *batches, empty]) == whole


@pytest.mark.bitexact  # `make test` runs it again under a second OpenBLAS kernel
@pytest.mark.parametrize("kind", KINDS)
def test_results_do_not_depend_on_where_batches_are_cut(kind: str) -> None:
    batches = EXAMPLES[kind][1]()
    table = pa.Table.from_batches(batches)
    whole = run(chain(kind), batches)
    for size in (1, 7, 333, table.num_rows):
        if size == 1 and table.num_rows > 100:
            continue  # one row at a time is covered by the small sizes of the merge example
        assert run(chain(kind), table.to_batches(max_chunksize=size)) == whole, f"batches of {size} rows"


@pytest.mark.parametrize("kind", KINDS)
def test_required_columns_are_honest(kind: str) -> None:
    c = chain(kind)
    need = c.required_columns()
    batches = EXAMPLES[kind][1]()
    only = [b.select(sorted(need)) for b in batches]
    run(chain(kind), only)  # those columns suffice
    for col in sorted(need):  # and each is needed
        without = [b.drop_columns([col]) for b in batches]
        with pytest.raises(Exception):  # noqa: B017, PT011 - any error: the decoder dead-letters such rows first
            run(chain(kind), without)


@pytest.mark.parametrize("kind", [k for k in KINDS if EXAMPLES[k][2] is not None])
def test_values_of_the_wrong_type_raise_a_data_error(kind: str) -> None:
    column = EXAMPLES[kind][2]
    assert column is not None
    batch = EXAMPLES[kind][1]()[0]
    i = batch.schema.get_field_index(column)
    bad = batch.set_column(i, column, pa.array(["not a value"] * batch.num_rows))
    with pytest.raises(OPERATOR_DATA_ERRORS):
        run(chain(kind), [bad])
