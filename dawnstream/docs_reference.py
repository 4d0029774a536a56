"""The docs site's generated references: every topology key and stage parameter (from the config
models and the operator registry) and every CLI command and option (from the typer app).

``docs/hooks.py`` adds both pages to the MkDocs build, so they cannot drift from the code; the same
functions print them for a terminal (``python -m dawnstream.docs_reference topology|cli``).
"""

from __future__ import annotations

import inspect
import re
import sys
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

SECTIONS = ("Topology", "InputSpec", "OutputSpec", "StageSpec", "BatchSpec", "KafkaSpec", "MetricsSpec")
KEYS = {"Topology": "(top level)", "InputSpec": "input", "OutputSpec": "outputs[]", "StageSpec": "stages[]",
        "BatchSpec": "batch", "KafkaSpec": "kafka", "MetricsSpec": "metrics"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    return re.sub(r"\b(typing|dawnstream\.[\w.]+)\.", "", text).replace("NoneType", "None")


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        try:
            value = info.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
        return f"`{value.model_dump() if isinstance(value, BaseModel) else value!r}`"
    return f"`{info.default!r}`"


def _limits(info: FieldInfo) -> str:
    out = []
    for m in info.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "min length"),
                           ("pattern", "pattern")):
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{sign} `{v}`")
    return ", ".join(out)


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__ or "").strip()


def topology_reference() -> str:
    """Markdown: each section of a topology file (key, type, default, limits) and each stage ``op`` with its
    parameters and defaults (the operator's constructor) and its documentation."""
    from dawnstream.operators.registry import OPERATORS
    from dawnstream.streams import config

    lines = ["# Topology reference", "",
             "Generated from `dawnstream/streams/config.py` and the operator registry at build time. A key that",
             "is not listed here, a value of the wrong type or out of its limits fails `load_topology` (and",
             "`dawnstream run`) at once with a `ConfigError` naming the key path (`stages.2.threshold`) and what",
             "was expected. `${VAR}` and `${VAR:-default}` in strings are read from the environment.", ""]
    for name in SECTIONS:
        model: type[BaseModel] = getattr(config, name)
        lines += [f"## `{KEYS[name]}`", "", _doc(model), "", "| key | type | default | limits |",
                  "|---|---|---|---|"]
        for field, info in model.model_fields.items():
            key = info.alias or field
            lines.append(f"| `{key}` | `{_cell(_type_name(info.annotation))}` | {_cell(_default(info))} | "
                         f"{_cell(_limits(info))} |")
        lines.append("")
    lines += ["## Stages (`op`)", "",
              "Each stage is `{op: <kind>, name: <optional>, ...parameters}`; the parameters are the operator's.", ""]
    for kind, cls in sorted(OPERATORS.items()):
        sig = inspect.signature(cls.__init__)
        lines += [f"### `{kind}`", "", f"`{cls.__module__}.{cls.__name__}`", "", "| parameter | default |", "|---|---|"]
        for p in list(sig.parameters.values())[1:]:
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            default = "required" if p.default is p.empty else f"`{p.default!r}`"
            lines.append(f"| `{p.name}` | {_cell(default)} |")
        doc = _doc(cls)
        lines += ["", "```text", *doc.splitlines(), "```", ""]
    return "\n".join(lines) + "\n"


def cli_reference() -> str:
    """Markdown: every ``dawnstream`` command with its help, arguments and options (defaults, env vars)."""
    import typer

    from dawnstream.cli import app

    root = typer.main.get_command(app)
    lines = ["# CLI reference", "", "Generated from the `dawnstream` command (typer) at build time; every command",
             "also answers `--help`.", ""]

    def walk(cmd: Any, path: list[str]) -> None:
        if hasattr(cmd, "commands"):  # a group (typer's own click or click's)
            for name in sorted(cmd.commands):
                walk(cmd.commands[name], [*path, name])
            return
        lines.extend([f"## `{' '.join(path)}`", "", inspect.cleandoc(cmd.help or ""), ""])
        rows = []
        for p in cmd.params:
            if p.name == "help":
                continue
            if p.param_type_name == "argument":
                what = _cell(getattr(p, "help", None) or "argument")
                rows.append(f"| `{str(p.name).upper()}` | {what} | {'required' if p.required else 'optional'} |")
                continue
            names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
            default = "" if p.default is None or p.is_flag and p.default is False else f"`{p.default}`"
            env = f" (env `{p.envvar}`)" if p.envvar else ""
            rows.append(f"| {names} | {_cell((p.help or '') + env)} | {_cell(default)} |")
        if rows:
            lines.extend(["| name | help | default |", "|---|---|---|", *rows, ""])

    walk(root, ["dawnstream"])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print({"topology": topology_reference, "cli": cli_reference}[sys.argv[1]]())
