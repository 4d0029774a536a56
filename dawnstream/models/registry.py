"""A versioned, on-disk model registry: artifacts (npz, ONNX, safetensors) with JSON metadata.

Layout under the registry root (one directory per model name)::

    <root>/<name>/<version>/artifact.<format>   the model's bytes, never a pickle
    <root>/<name>/<version>/meta.json           ModelVersion (content hash, parent, training data, metrics)
    <root>/<name>/promoted.json                 {"current": v, "history": [...]} (promotions, for rollback)

Writes are atomic (a temporary directory renamed into place, ``os.replace`` for the pointer), so a
reader - a serving worker polling for a new version between batches - never sees half a model. The
version number is the next free integer; two trainers registering at once get different numbers.
The shape follows MLflow's model registry (versions, stages/aliases, lineage) reduced to files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from dawnstream.errors import DawnstreamError

FORMATS = ("npz", "onnx", "safetensors")
REGISTRY_ENV = "DAWNSTREAM_REGISTRY"


class ModelError(DawnstreamError):
    """A model, version or artifact that does not exist, or whose bytes no longer match their hash."""


def default_root() -> Path:
    """``$DAWNSTREAM_REGISTRY``, else ``~/.local/share/dawnstream/registry``."""
    env = os.environ.get(REGISTRY_ENV)
    return Path(env) if env else Path.home() / ".local" / "share" / "dawnstream" / "registry"


@dataclass
class ModelVersion:
    """Metadata of one registered version (``meta.json``).

    Attributes:
        name: model name (``[A-Za-z0-9_.-]+``).
        version: 1, 2, ... per name.
        format: ``npz``, ``onnx`` or ``safetensors``.
        sha256: hex digest of the artifact's bytes.
        size_bytes: artifact size in bytes.
        created_at: Unix seconds.
        parent: the version this one was trained from or replaces (None for the first).
        training_data: where the training rows came from, e.g. ``{"topic": t, "offsets": {"0": [first, last]}}``.
        metrics: evaluation numbers (e.g. ``{"rmse": 0.95}``).
        params: hyperparameters and shapes (free-form JSON).
        path: the artifact's path (not stored; filled in when read).
    """

    name: str
    version: int
    format: str
    sha256: str
    size_bytes: int
    created_at: float
    parent: int | None = None
    training_data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """The metadata as JSON-ready values (``path`` left out)."""
        d = asdict(self)
        d.pop("path")
        return d

    def read_bytes(self) -> bytes:
        """The artifact's bytes, checked against ``sha256``.

        Raises:
            ModelError: the file is gone or its content changed since it was registered.
        """
        if self.path is None or not self.path.exists():
            raise ModelError(f"model {self.name} v{self.version}: artifact {self.path} is missing")
        data = self.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise ModelError(f"model {self.name} v{self.version}: {self.path} does not match its sha256 "
                             f"{self.sha256[:12]}...; it was changed after registration - register a new version")
        return data


def _check_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "_.-" for c in name) or name.startswith("."):
        raise ModelError(f"model name {name!r}: expected letters, digits, '_', '.', '-' (not starting with '.')")
    return name


class Registry:
    """Models and their versions under ``root`` (created on first write).

    >>> import tempfile
    >>> reg = Registry(tempfile.mkdtemp())
    >>> v1 = reg.register("demo", b"\\x00" * 8, "npz", metrics={"rmse": 1.0})
    >>> v2 = reg.register("demo", b"\\x01" * 8, "npz", parent=1)
    >>> reg.promote("demo", 1).version, reg.promote("demo", 2).version, reg.rollback("demo").version
    (1, 2, 1)
    >>> [v.version for v in reg.versions("demo")], reg.promoted("demo").version
    ([1, 2], 1)

    Raises:
        ModelError: unknown model or version, bad name or format, nothing to roll back to.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    # -- write --------------------------------------------------------------------------------
    def register(self, name: str, artifact: bytes, fmt: str, *, parent: int | None = None,
                 training_data: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                 params: dict[str, Any] | None = None) -> ModelVersion:
        """Store ``artifact`` as the next version of ``name`` (not promoted: see :meth:`promote`)."""
        _check_name(name)
        if fmt not in FORMATS:
            raise ModelError(f"format {fmt!r}: expected one of {', '.join(FORMATS)} (never pickle)")
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        meta = ModelVersion(name=name, version=0, format=fmt, sha256=hashlib.sha256(artifact).hexdigest(),
                            size_bytes=len(artifact), created_at=time.time(), parent=parent,
                            training_data=dict(training_data or {}), metrics=dict(metrics or {}),
                            params=dict(params or {}))
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=base))
        try:
            (tmp / f"artifact.{fmt}").write_bytes(artifact)
            while True:
                meta.version = max(self._version_numbers(name), default=0) + 1
                (tmp / "meta.json").write_bytes(orjson.dumps(meta.to_json(), option=orjson.OPT_INDENT_2))
                try:
                    os.rename(tmp, base / str(meta.version))  # atomic; fails if another writer took the number
                    break
                except OSError:
                    continue
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        meta.path = base / str(meta.version) / f"artifact.{fmt}"
        return meta

    def promote(self, name: str, version: int) -> ModelVersion:
        """Make ``version`` the one served; the previous one stays in the history for :meth:`rollback`."""
        mv = self.get(name, version)
        doc = self._pointer(name)
        if doc["history"] and doc["history"][-1] == version:
            return mv
        doc["history"].append(version)
        self._write_pointer(name, doc)
        return mv

    def rollback(self, name: str) -> ModelVersion:
        """Serve the previously promoted version again."""
        doc = self._pointer(name)
        if len(doc["history"]) < 2:
            raise ModelError(f"model {name}: nothing to roll back to (promotions: {doc['history']})")
        doc["history"].pop()
        self._write_pointer(name, doc)
        return self.get(name, doc["history"][-1])

    # -- read ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Registered model names, sorted."""
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first (empty when unknown)."""
        return [self.get(name, v) for v in sorted(self._version_numbers(name))]

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """One version's metadata; ``version`` None = the promoted one, else the latest.

        Raises:
            ModelError: unknown model or version.
        """
        _check_name(name)
        if version is None:
            promoted = self.promoted(name)
            if promoted is not None:
                return promoted
            nums = self._version_numbers(name)
            if not nums:
                raise ModelError(f"no model named {name!r} in {self.root} (known: {self.names() or 'none'})")
            version = max(nums)
        meta_path = self.root / name / str(version) / "meta.json"
        if not meta_path.exists():
            raise ModelError(f"model {name!r} has no version {version} in {self.root} "
                             f"(versions: {sorted(self._version_numbers(name)) or 'none'})")
        try:
            doc = orjson.loads(meta_path.read_bytes())
            if not isinstance(doc, dict):
                raise TypeError(f"expected a JSON object, got {type(doc).__name__}")
            known = set(ModelVersion.__dataclass_fields__)
            unknown = sorted(set(doc) - known)
            if unknown:
                raise TypeError(f"unknown keys {unknown}")
            mv = ModelVersion(**doc)
            if not isinstance(mv.format, str) or not mv.format.isalnum():
                raise TypeError(f"format {mv.format!r} is not an artifact format")
        except (orjson.JSONDecodeError, TypeError, ValueError) as e:
            raise ModelError(f"{meta_path}: not a version's metadata ({type(e).__name__}: {e}); register the "
                             "model again (dawnstream models register)") from None
        mv.path = meta_path.parent / f"artifact.{mv.format}"
        return mv

    def promoted(self, name: str) -> ModelVersion | None:
        """The promoted version of ``name``, or None when none was promoted."""
        history = self._pointer(name)["history"]
        return self.get(name, history[-1]) if history else None

    def history(self, name: str) -> list[int]:
        """The versions of ``name`` promoted so far, oldest first (a version promoted twice appears twice).

        Raises:
            ModelError: the promotion file is not what it should be.
        """
        return [int(v) for v in self._pointer(name)["history"]]

    def promoted_version(self, name: str) -> int | None:
        """Just the promoted version number (one small file read: cheap enough to poll per batch)."""
        history = self._pointer(name)["history"]
        return int(history[-1]) if history else None

    # -- internals ------------------------------------------------------------------------------
    def _version_numbers(self, name: str) -> list[int]:
        base = self.root / name
        if not base.exists():
            return []
        return [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()]

    def _pointer(self, name: str) -> dict[str, Any]:
        path = self.root / _check_name(name) / "promoted.json"
        try:
            doc = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return {"history": []}
        except orjson.JSONDecodeError as e:
            raise ModelError(f"{path}: not valid JSON ({e}); restore it or promote a version again") from None
        try:
            return {"history": [int(v) for v in doc.get("history", [])]}
        except (AttributeError, TypeError, ValueError) as e:
            raise ModelError(f"{path}: not a promotion history ({type(e).__name__}: {e}); restore it or promote a "
                             "version again") from None

    def _write_pointer(self, name: str, doc: dict[str, Any]) -> None:
        base = self.root / name
        fd, tmp = tempfile.mkstemp(prefix=".promoted-", dir=base)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps({"current": doc["history"][-1] if doc["history"] else None,
                                  "history": doc["history"]}))
        os.replace(tmp, base / "promoted.json")
