"""Where running workers announce their ``/metrics`` endpoints, so ``dawnstream ui`` finds them.

Each worker's :class:`~dawnstream.streams.metrics.MetricsServer` writes one JSON file when it starts
listening and removes it when it stops: ``<run dir>/workers/<host>-<pid>-<port>.json`` with the
topology, worker index, URL and pid. The run dir is ``$DAWNSTREAM_RUN_DIR``, else
``$DAWNSTREAM_CACHE/run``, else ``~/.cache/dawnstream/run``. This is Prometheus' file-based service
discovery (``file_sd_configs``) with the worker as the writer; workers on other machines are given
to the UI by URL (``dawnstream ui --target``). A worker killed with ``kill -9`` leaves its file: a
reader drops files whose process is gone (same host) and the UI shows an endpoint that stops
answering as down.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import orjson

RUN_DIR_ENV = "DAWNSTREAM_RUN_DIR"


def run_dir() -> Path:
    """The directory announcements live in (see the module docstring); not created here."""
    env = os.environ.get(RUN_DIR_ENV)
    if env:
        return Path(env)
    return Path(os.environ.get("DAWNSTREAM_CACHE", Path.home() / ".cache" / "dawnstream")) / "run"


def announce(topology: str, worker: int, host: str, port: int) -> Path | None:
    """Write this worker's announcement; returns its path (None when the run dir cannot be written:
    discovery is a convenience, never a reason for a worker to fail)."""
    url_host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    doc = {"topology": topology, "worker": worker, "url": f"http://{url_host}:{port}", "pid": os.getpid(),
           "host": socket.gethostname(), "started": time.time()}
    d = run_dir() / "workers"
    path = d / f"{doc['host']}-{doc['pid']}-{port}.json"
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(doc))
        os.replace(tmp, path)
    except OSError:
        return None
    return path


def withdraw(path: Path | None) -> None:
    """Remove an announcement (a stopped worker); missing files are fine."""
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def announced(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every live announcement, oldest first: dicts with ``topology``, ``worker``, ``url``, ``pid``, ``host``,
    ``started`` (Unix s). Files of processes that are gone (on this host) are removed; unreadable ones skipped."""
    d = (directory or run_dir()) / "workers"
    if not d.is_dir():
        return []
    me = socket.gethostname()
    out = []
    for path in sorted(d.glob("*.json")):
        try:
            doc = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        pid = int(doc.get("pid") or 0)
        if doc.get("host") == me and (pid <= 0 or not _alive(pid)):
            withdraw(path)
            continue
        out.append(doc)
    return sorted(out, key=lambda d: (d.get("started", 0), d.get("url", "")))
