"""The model registry as the dashboard shows it: every model, its versions with lineage and metrics,
the promoted version and its promote/rollback history, and which running job serves which version."""

from __future__ import annotations

from typing import Any

from dawnstream.models.registry import ModelError, Registry


def registry_view(registry: Registry, served: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """``{"root", "models": [{"name", "promoted", "history", "versions": [...], "served_by": [...]}], "error"}``.

    Args:
        registry: the registry to read (``$DAWNSTREAM_REGISTRY`` by default in the CLI).
        served: registry model name -> ``[{"topology", "stage", "model", "version"}]`` from the jobs' panels.
    """
    out: dict[str, Any] = {"root": str(registry.root), "models": [], "error": None}
    try:
        names = registry.names()
    except (OSError, ModelError) as e:
        out["error"] = str(e)
        return out
    for name in names:
        try:
            versions = registry.versions(name)
            promoted, history = registry.promoted_version(name), registry.history(name)
        except (OSError, ModelError, ValueError) as e:
            out["models"].append({"name": name, "error": str(e), "versions": [], "served_by": []})
            continue
        out["models"].append({
            "name": name, "promoted": promoted, "history": history,
            "versions": [{"version": v.version, "format": v.format, "created_at": v.created_at, "parent": v.parent,
                          "sha256": v.sha256[:12], "size_bytes": v.size_bytes, "metrics": v.metrics,
                          "training_data": v.training_data} for v in versions],
            "served_by": (served or {}).get(name, []),
        })
    return out
