"""No pickle, eval or exec anywhere in the package; metrics bind to loopback by default."""

from __future__ import annotations

import ast
from pathlib import Path

from dawnstream.streams.config import MetricsSpec

PKG = Path(__file__).resolve().parents[2] / "dawnstream"
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve"}


def test_no_eval_exec_or_pickle_in_the_package() -> None:
    problems = []
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        safe_loads: set[ast.AST] = set()
        for node in sorted(ast.walk(tree), key=lambda n: isinstance(n, ast.Attribute)):  # calls first
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
                problems.append(f"{path}:{node.lineno} calls {node.func.id}")
            if isinstance(node, ast.Import):
                problems += [f"{path}:{node.lineno} imports {a.name}" for a in node.names
                             if a.name.split(".")[0] in FORBIDDEN_MODULES]
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
                problems.append(f"{path}:{node.lineno} imports from {node.module}")
            if isinstance(node, ast.Attribute) and node.attr in ("load", "loads") and isinstance(node.value, ast.Name) \
                    and node.value.id in ("pickle", "np") and node.attr == "load" and node not in safe_loads:
                problems.append(f"{path}:{node.lineno} uses {node.value.id}.{node.attr} (allow_pickle risk)")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and any(k.arg == "allow_pickle" and isinstance(k.value, ast.Constant) and k.value.value is False
                            for k in node.keywords):
                safe_loads.add(node.func)  # np.load(..., allow_pickle=False) refuses pickled objects
    assert problems == []


def test_metrics_bind_to_loopback_by_default() -> None:
    assert MetricsSpec().host == "127.0.0.1"


def test_secrets_never_reach_the_logs(caplog) -> None:
    import logging

    from dawnstream.logs import KeyValueFormatter, event, get_logger
    from dawnstream.streams.kafka_clients import base_settings, describe_settings

    secrets = {"sasl.password": "hunter2-sasl", "ssl.key.password": "hunter2-key",
               "sasl.oauthbearer.client.secret": "hunter2-oauth", "sasl.username": "alice"}
    conf = base_settings("127.0.0.1:1", {**secrets, "security.protocol": "SASL_SSL"})
    log = get_logger("dawnstream.test")
    with caplog.at_level(logging.INFO, logger="dawnstream"):
        event(log, "runner.clients", settings=describe_settings(conf))
    text = "\n".join(KeyValueFormatter().format(r) for r in caplog.records)
    assert "runner.clients" in text and "SASL_SSL" in text
    assert "hunter2" not in text
