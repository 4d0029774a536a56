"""What the demos that run a job as processes share: a fresh registry and topics, the processes'
health while the demo runs, and stopping them the way a user would (SIGTERM, then a kill)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from dawnstream.models.registry import REGISTRY_ENV
from dawnstream.streams.config import Topology, load_topology
from dawnstream.streams.kafka_clients import TopicAdmin
from dawnstream.streams.state import changelog_spec

Procs = dict[str, subprocess.Popen]


def fresh_job(topology: Path, registry: Path) -> Topology:
    """Load ``topology`` against an empty ``registry`` (exported as ``$DAWNSTREAM_REGISTRY``) and reset
    its input, dead-letter, output and changelog topics.

    Raises:
        DawnstreamError: the broker cannot be reached.
    """
    shutil.rmtree(registry, ignore_errors=True)
    registry.mkdir(parents=True)
    os.environ[REGISTRY_ENV] = str(registry)
    topo = load_topology(topology)
    spec = topo.input.spec()
    TopicAdmin(topo.kafka.bootstrap, topo.kafka.settings).reset(
        [spec, spec.dlq(), *(o.spec(topo.input.partitions) for o in topo.outputs),
         changelog_spec(topo.name, topo.input.partitions)])
    return topo


def worker_ready(url: str) -> bool:
    """True once the worker behind ``url`` (its ``/metrics``) owns at least one partition."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - our own worker on localhost
            lines = r.read().decode().splitlines()
    except OSError:
        return False
    return any(line.startswith("dawnstream_assigned_partitions{") and float(line.rsplit(" ", 1)[1]) > 0
               for line in lines)


def stage_samples(url: str) -> list[tuple[dict[str, str], float]]:
    """The ``dawnstream_stage_value`` samples (labels, value) on a worker's ``/metrics``; empty when the
    worker does not answer (yet)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - our own worker on localhost
            text = r.read().decode()
    except OSError:
        return []
    return [(dict(s.labels), s.value) for fam in text_string_to_metric_families(text)
            if fam.name == "dawnstream_stage_value" for s in fam.samples]


def stage_gauges(url: str) -> dict[str, float]:
    """The stages' live numbers by name, summed over partitions (:func:`stage_samples`)."""
    out: dict[str, float] = {}
    for labels, value in stage_samples(url):
        out[labels["name"]] = out.get(labels["name"], 0.0) + value
    return out


def exited(procs: Procs) -> str | None:
    """Why the demo must stop early: the first process that exited, or None while all run."""
    return next((f"the {name} exited with status {p.returncode}" for name, p in procs.items()
                 if p.poll() is not None), None)


def stop(procs: Procs, timeout_s: float = 30.0) -> None:
    """SIGTERM every process still running (each finishes its batch and commits), then wait; kill
    what outlives ``timeout_s``."""
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()


def failed(procs: Procs) -> str | None:
    """After :func:`stop`: the first process that did not stop cleanly, or None."""
    return next((f"the {name} stopped with status {p.returncode}" for name, p in procs.items()
                 if p.returncode not in (0, -signal.SIGTERM)), None)
