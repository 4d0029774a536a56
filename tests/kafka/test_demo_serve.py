"""`make demo-serve` end to end: the function it runs, on a prefix of MovieLens, against the real broker,
with `dawnstream run` and `dawnstream models retrain` as processes of their own - the code path of the
README's command, which must not break unnoticed as `make demo` once did."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from dawnstream.demo_serve import run_serve_demo

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_demo_serve_answers_everything_and_learns(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAWNSTREAM_KAFKA_BOOTSTRAP", kafka_bootstrap)
    screen = io.StringIO()
    result = run_serve_demo(Console(file=screen, width=120), limit=8000, rate=2000.0, retrain_every=2000)
    assert result.error is None, result.error
    assert result.ratings == 8000 and result.requests == 1999 and result.lost == 0
    assert result.versions >= 1  # θ retrained from the topic and swapped in
    assert result.rmse_test < result.rmse_mean  # the models beat the global mean on the last 20%
    st = result.status
    assert st["counters"]["feedback"] == 8000 and st["counters"]["errors"] == 0
    assert set(st["rmse"]) >= {"velox", "svd", "online_mf", "mean", "served"}
    assert "RMSE on the last 20%" in screen.getvalue()
