"""The dashboard's polling loop: finds the workers, scrapes them, asks the broker and the registry,
and keeps a short history per job for the charts.

Every ``interval_s`` (default 1 s) it reads the announcements (:mod:`dawnstream.streams.endpoints`)
plus the ``--target`` URLs, fetches each worker's ``/metrics``, ``/healthz`` and ``/stages`` in
parallel (2 s timeout each), and rebuilds every job's view (:func:`dawnstream.ui.jobs.job_view`).
The broker and the registry are asked every ``slow_interval_s`` (default 5 s). :meth:`Collector.state`
is what ``GET /api/state`` answers.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from dawnstream.logs import event, get_logger
from dawnstream.models.registry import Registry
from dawnstream.streams.endpoints import announced
from dawnstream.ui.jobs import Endpoint, job_view
from dawnstream.ui.registry_view import registry_view
from dawnstream.ui.scrape import Scrape, json_safe

log = get_logger(__name__)
HISTORY_POINTS = 600  # chart points per job (10 minutes at 1 s)
FETCH_TIMEOUT_S = 2.0


def _add_group_partitions(job: dict[str, Any], groups: list[dict[str, Any]]) -> None:
    """Partitions a worker has not reported lag for yet (assigned, nothing read): the group's view from the
    broker, the member that holds each (``dawnstream-<topology>-<worker>`` client ids) and committed lag."""
    seen = {p["partition"] for p in job["partitions"]}
    for g in groups:
        if g.get("topology") != job["topology"] or "partitions" not in g:
            continue
        owner = {p: int(w) if (w := m["client_id"].rsplit("-", 1)[-1]).isdigit() else None
                 for m in g.get("members", []) for p in m["partitions"]}
        extra = [{"partition": p["partition"], "topic": g["topic"], "worker": owner.get(p["partition"]),
                  "lag": max(p["lag"], 0), "source": "group"} for p in g["partitions"] if p["partition"] not in seen]
        job["partitions"] = sorted(job["partitions"] + extra, key=lambda p: p["partition"])
        job["lag_total"] = sum(p["lag"] for p in job["partitions"])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as r:  # noqa: S310 - http URLs of workers
        return bytes(r.read())


class Collector:
    """Polls the jobs, the broker and the registry in a daemon thread.

    Args:
        targets: worker endpoint URLs given by hand (``http://host:port``), besides the announced ones.
        bootstrap: the broker to ask (None: do not ask a broker).
        registry: the model registry to show (None: the default registry).
        discover: read announcements (off: only ``targets``).
        interval_s: scrape period, s; slow_interval_s: broker and registry period, s.
    """

    def __init__(self, targets: list[str] | None = None, bootstrap: str | None = None,
                 registry: Registry | None = None, discover: bool = True, interval_s: float = 1.0,
                 slow_interval_s: float = 5.0) -> None:
        self.targets = [t.rstrip("/") for t in targets or []]
        self.bootstrap = bootstrap
        self.registry = registry or Registry()
        self.discover = discover
        self.interval_s, self.slow_interval_s = interval_s, slow_interval_s
        self.endpoints: dict[str, Endpoint] = {}
        self.history: dict[str, deque[list[float | None]]] = {}
        self._jobs: list[dict[str, Any]] = []
        self._broker: dict[str, Any] = {"bootstrap": bootstrap, "up": None, "error": None, "topics": [], "groups": []}
        self._dead: list[dict[str, Any]] = []
        self._registry: dict[str, Any] = {"models": []}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="ui-scrape")
        self._broker_view: Any = None
        self._last_slow = 0.0
        self.scrapes = 0
        self._thread = threading.Thread(target=self._loop, name="ui-collector", daemon=True)

    def start(self) -> Collector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=False)
        if self._broker_view is not None:
            self._broker_view.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - the dashboard keeps polling
                event(log, "ui.poll_failed", error=f"{type(e).__name__}: {e}")
            self._stop.wait(max(self.interval_s - (time.monotonic() - t0), 0.05))

    # -- one round --------------------------------------------------------------------------------
    def _found(self) -> dict[str, dict[str, Any] | None]:
        found: dict[str, dict[str, Any] | None] = {t: None for t in self.targets}
        if self.discover:
            for doc in announced():
                found[str(doc["url"]).rstrip("/")] = doc
        return found

    def _scrape(self, ep: Endpoint) -> None:
        at = time.time()
        try:
            text = _get(ep.url + "/metrics").decode()
            ep.scrapes.append(Scrape.parse(text, at))
            try:
                ep.health = orjson.loads(_get(ep.url + "/healthz"))
            except urllib.error.HTTPError as e:  # 503: failed; its body still says why
                ep.health = orjson.loads(e.read())
            ep.stages = orjson.loads(_get(ep.url + "/stages"))
            ep.error, ep.last_ok = None, at
        except Exception as e:  # noqa: BLE001 - an endpoint that does not answer is shown as down
            ep.error = f"{type(e).__name__}: {e}"

    def poll(self) -> None:
        """One round: discover, scrape every endpoint, rebuild the jobs (and every ``slow_interval_s`` the
        broker's and the registry's views)."""
        found = self._found()
        for url, doc in found.items():
            ep = self.endpoints.get(url)
            if ep is None:
                self.endpoints[url] = Endpoint(url, doc)
            elif doc is not None:
                ep.announced = doc
        # An announced endpoint that is gone from the run dir (a clean stop) leaves the view after a minute.
        now = time.time()
        for url in [u for u, ep in self.endpoints.items() if u not in found and now - ep.last_ok > 60]:
            del self.endpoints[url]
        list(self._pool.map(self._scrape, [ep for u, ep in self.endpoints.items() if u in found]))
        by_job: dict[str, list[Endpoint]] = {}
        for ep in self.endpoints.values():
            by_job.setdefault(ep.topology or ep.url, []).append(ep)
        jobs = [job_view(name, eps, now) for name, eps in sorted(by_job.items())]
        for j in jobs:
            h = self.history.setdefault(j["topology"], deque(maxlen=HISTORY_POINTS))
            h.append([now, j["rows_in_per_s"], j["rows_out_per_s"], j["batch_p50_ms"], j["batch_p99_ms"],
                      j["lag_total"]])
        if time.monotonic() - self._last_slow >= self.slow_interval_s:
            self._last_slow = time.monotonic()
            self._slow(jobs)
        with self._lock:
            self._jobs = jobs
            self.scrapes += 1

    def _slow(self, jobs: list[dict[str, Any]]) -> None:
        served: dict[str, list[dict[str, Any]]] = {}
        for j in jobs:
            for stage, by_part in j["panels"].items():
                for panel in by_part.values():
                    for model, reg_name in (panel.get("registry_models") or {}).items():
                        entry = {"topology": j["topology"], "stage": stage, "model": model,
                                 "version": (panel.get("versions") or {}).get(model)}
                        if entry not in served.setdefault(reg_name, []):
                            served[reg_name].append(entry)
        registry = registry_view(self.registry, served)
        broker, dead = self._ask_broker(jobs)
        with self._lock:
            self._registry, self._broker, self._dead = registry, broker, dead

    def _ask_broker(self, jobs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        out: dict[str, Any] = {"bootstrap": self.bootstrap, "up": None, "error": None, "topics": [], "groups": []}
        if self.bootstrap is None:
            return out, []
        dead = []
        try:
            if self._broker_view is None:
                from dawnstream.ui.broker_view import BrokerView

                self._broker_view = BrokerView(self.bootstrap)
            bv = self._broker_view
            names: list[str] = []
            for j in jobs:
                for t in [j.get("input"), *j["outputs"]]:
                    if t and t not in names:
                        names.append(t)
            out["topics"] = bv.topics(names)
            for j in jobs:
                if j.get("group") and j.get("input"):
                    try:
                        out["groups"].append({"topology": j["topology"], **bv.group(j["group"], j["input"])})
                    except Exception as e:  # noqa: BLE001 - one group that cannot be described
                        out["groups"].append({"topology": j["topology"], "group": j["group"], "error": str(e)})
                    dead.append({"topology": j["topology"], **bv.dead_letters(j["input"])})
            out["up"] = True
        except Exception as e:  # noqa: BLE001 - a broker that is down is shown as down
            out["up"], out["error"] = False, f"{type(e).__name__}: {e}"
        return out, dead

    # -- answers ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """``/api/state``: ``at`` (Unix s), ``jobs`` (each with its ``history``: ``[t, rows in/s, rows out/s,
        batch p50 ms, batch p99 ms, lag]`` points), ``broker``, ``dead_letters`` and ``registry``; NaN and
        infinities as null."""
        with self._lock:
            jobs = [{**j, "history": list(self.history.get(j["topology"], []))} for j in self._jobs]
            for j in jobs:
                _add_group_partitions(j, self._broker.get("groups", []))
            doc = {"at": time.time(), "interval_s": self.interval_s, "scrapes": self.scrapes, "jobs": jobs,
                   "broker": self._broker, "dead_letters": self._dead, "registry": self._registry}
        return json_safe(doc)
