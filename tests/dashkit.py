"""The dashboard in a real browser: ``dawnstream ui``'s app on a free port, Debian's Chromium driven by
Playwright, and checks that what the page shows is what the jobs' endpoints report.

Used by the browser tests (``tests/kafka/test_ui_*.py`` and the capability tests that open the
dashboard on their running job). Screenshots go to ``$DAWNSTREAM_SCREENSHOTS`` when set (the
README's pictures are made that way), else to the test's tmp_path.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dawnstream.models.registry import Registry
from dawnstream.ui.app import create_app
from dawnstream.ui.collector import Collector
from dawnstream.ui.scrape import Scrape

CHROMIUM = os.environ.get("DAWNSTREAM_CHROMIUM", "/usr/bin/chromium")
# The flags a closed network needs: no background connections, no component updates, no sync.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics_of(url: str) -> Scrape:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        return Scrape.parse(r.read().decode(), time.time())


def stages_of(url: str) -> dict[str, Any]:
    import orjson

    with urllib.request.urlopen(url + "/stages", timeout=5) as r:
        return dict(orjson.loads(r.read()))


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


class Dashboard:
    """The UI server (in this process) and one browser page on it.

    Args:
        bootstrap: the broker the dashboard asks (dead letters, groups).
        targets: worker endpoints to show; discover: also the announced ones.
        registry: the model registry to show.
        shots: where screenshots go (``$DAWNSTREAM_SCREENSHOTS`` wins).
    """

    def __init__(self, bootstrap: str | None, targets: list[str] | None = None, discover: bool = False,
                 registry: Registry | None = None, shots: Path | None = None) -> None:
        if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
            pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's chromium (make test does, as root) "
                        "or set DAWNSTREAM_CHROMIUM")
        import uvicorn
        from playwright.sync_api import sync_playwright

        self.collector = Collector(targets=targets, bootstrap=bootstrap, registry=registry, discover=discover,
                                   interval_s=0.5, slow_interval_s=1.0).start()
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.collector), host="127.0.0.1", port=self.port,
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="ui-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the dashboard server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.shots = Path(os.environ.get("DAWNSTREAM_SCREENSHOTS") or shots or ".")
        self.shots.mkdir(parents=True, exist_ok=True)
        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        self.page = self.browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.goto(self.url)

    def add_target(self, url: str) -> None:
        self.collector.targets.append(url.rstrip("/"))

    def values(self, scope: str) -> dict[str, float | None]:
        """``data-k`` -> ``data-v`` (first occurrence) of every number inside the elements matching ``scope``."""
        pairs = self.page.eval_on_selector_all(
            scope + " [data-k]", "els => els.map(e => [e.dataset.k, e.dataset.v])")
        out: dict[str, float | None] = {}
        for k, v in pairs:
            if k not in out:
                out[k] = None if v in ("", None) else float(v)
        return out

    def rows(self, scope: str, attr: str) -> dict[str, dict[str, float | None]]:
        """Per table row matching ``scope [data-<attr>]``: its ``data-k`` -> ``data-v`` cells."""
        got = self.page.eval_on_selector_all(
            f"{scope} tr[data-{attr}]",
            f"rows => rows.map(r => [r.dataset['{attr}'], [...r.querySelectorAll('[data-k]')]"
            ".map(c => [c.dataset.k, c.dataset.v])])")
        return {key: {k: None if v in ("", None) else float(v) for k, v in cells} for key, cells in got}

    def wait_until(self, check: Any, timeout_s: float = 30.0, what: str = "the page") -> None:
        """Call ``check()`` (returns a list of mismatches) until it returns none; fail with the last ones."""
        deadline = time.monotonic() + timeout_s
        problems: list[str] = ["never checked"]
        while time.monotonic() < deadline:
            try:
                problems = check()
            except Exception as e:  # noqa: BLE001 - the page is between refreshes; try again
                problems = [f"{type(e).__name__}: {e}"]
            if not problems:
                return
            time.sleep(0.5)
        pytest.fail(f"{what} never showed what the jobs report: " + "; ".join(problems[:12]))

    def shot(self, selector: str, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.locator(selector).first.screenshot(path=str(path))
        return path

    def close(self) -> None:
        try:
            self.browser.close()
            self._pw.stop()
        finally:
            self.server.should_exit = True
            self.thread.join(10)
            self.collector.stop()


def job_selector(topology: str) -> str:
    return f'section.job[data-job="{topology}"]'


def job_matches_metrics(dash: Dashboard, topology: str, urls: list[str]) -> list[str]:
    """What the job's card shows against a fresh scrape of every worker (an idle job: nothing moves)."""
    scrapes = [metrics_of(u) for u in urls]
    sel = job_selector(topology)
    shown = dash.values(sel)
    if not shown:
        return [f"no card for {topology}"]
    want = {"rows_in_total": sum(s.sum("dawnstream_rows_in_total") for s in scrapes),
            "rows_out_total": sum(s.sum("dawnstream_rows_out_total") for s in scrapes),
            "dead_letters_total": sum(s.sum("dawnstream_dead_letters_total") for s in scrapes),
            "workers_up": float(len(urls))}
    problems = [f"{k}: page {shown.get(k)} != metrics {v}" for k, v in want.items() if not close(shown.get(k), v)]
    stages = dash.rows(sel, "stage")
    for s in scrapes:
        for lb, _ in s.rows("dawnstream_stage_rows_in_total"):
            got = stages.get(lb["stage"], {}).get("rows_in")
            total = sum(x.sum("dawnstream_stage_rows_in_total", stage=lb["stage"]) for x in scrapes)
            if not close(got, total):
                problems.append(f"stage {lb['stage']} rows in: page {got} != metrics {total}")
    parts = dash.rows(sel, "partition")
    for s in scrapes:
        for lb, v in s.rows("dawnstream_consumer_lag"):
            got = parts.get(lb["partition"], {}).get("lag")
            if not close(got, max(v, 0.0)):
                problems.append(f"partition {lb['partition']} lag: page {got} != metrics {v}")
    return problems


def stage_values(urls: list[str], stage: str, name: str) -> dict[str, float]:
    """``dawnstream_stage_value{stage, name}`` per partition, over the workers."""
    out: dict[str, float] = {}
    for u in urls:
        for lb, v in metrics_of(u).rows("dawnstream_stage_value", stage=stage, name=name):
            out[lb["partition"]] = v
    return out


def dead_letters_shown(dash: Dashboard, topic: str, dead: int) -> list[str]:
    """The dead-letter panel of ``topic`` shows ``dead`` dead letters."""
    got = dash.values(f'#dead-letters [data-topic="{topic}.dlq"]').get("messages")
    return [] if got == dead else [f"dead letters: page {got} != {dead}"]


def check_idle_job(bootstrap: str, topo: Any, runner: Any, check: Any, shots: dict[str, str], shots_dir: Path,
                   dead: int | None = None, registry: Registry | None = None) -> None:
    """Open the dashboard on one idle worker and wait until its job card matches the worker's /metrics, the
    dead-letter panel shows ``dead`` and ``check(dash, url)`` (the capability's panel) finds no mismatch; then
    save ``shots`` (CSS selector -> screenshot name, the selector may use ``{job}`` for the job's card)."""
    url = f"http://127.0.0.1:{runner.metrics_server.port}"
    dash = Dashboard(bootstrap, targets=[url], registry=registry, shots=shots_dir)

    def shown() -> list[str]:
        problems = job_matches_metrics(dash, topo.name, [url]) + check(dash, url)
        return problems + ([] if dead is None else dead_letters_shown(dash, topo.input.topic, dead))

    try:
        dash.wait_until(shown, what=f"the {topo.name} job")
        for selector, name in shots.items():
            dash.shot(selector.format(job=job_selector(topo.name)), name)
    finally:
        dash.close()
