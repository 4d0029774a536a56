"""MkDocs hooks: the generated reference pages, and links to repository files outside ``docs/``.

The pages were the README's sections, whose links point at repository files (``topologies/x.yaml``,
``docker/compose.yaml``); the site has no such pages, so each becomes the file's path in code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def on_files(files: Files, config: Any) -> Files:
    from dawnstream.docs_reference import cli_reference, topology_reference

    files.append(File.generated(config, "reference/topology.md", content=topology_reference()))
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    here = (Path(config["docs_dir"]) / page.file.src_path).parent

    def repl(m: re.Match[str]) -> str:
        text, target = m.group(1), m.group(2)
        path = target.split("#", 1)[0]
        if not path or "://" in path or (here / path).exists():
            return m.group(0)
        if (REPO / path).exists():
            return text if text.strip("`") == path else f"{text} (`{path}`)"
        return m.group(0)

    return LINK.sub(repl, markdown)
