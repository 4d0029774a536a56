"""`make demo-labels` end to end: the function it runs, on a prefix of Rotten Tomatoes, against the real broker,
with `dawnstream run` and `dawnstream models train-end-model` as processes of their own - the code path of the
README's command."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from dawnstream.demo_labels import run_labels_demo

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_demo_labels_labels_everything_and_trains_the_end_model(kafka_bootstrap: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAWNSTREAM_KAFKA_BOOTSTRAP", kafka_bootstrap)
    screen = io.StringIO()
    result = run_labels_demo(Console(file=screen, width=140), limit=5000, rate=1000.0, train_every=1500)
    assert result.error is None, result.error
    assert result.labelled == 5000 - result.dev_rows and result.reviewed > 10
    assert 0.65 < result.covered_accuracy < 0.9 and 0.5 < result.covered_share < 0.8
    assert result.end_model_versions >= 1 and result.end_model_rows > 0
    table = result.lf_table
    assert len(table) == 12 and all(0 < st["coverage"] < 0.5 for st in table.values())
    assert all("emp_accuracy" in st for st in table.values())  # reviewed rows came back with their class
    assert "label model accuracy" in screen.getvalue()
