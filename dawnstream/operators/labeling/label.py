"""The ``label`` stage: labeling functions on every row, LF statistics and a label model kept online,
a probabilistic label per row (Snorkel, Ratner et al., VLDB'18, run as a stream).

Per micro-batch: every LF votes on every row (the label matrix, :class:`~.lf.LFBatch` shares one
tokenization); the LF statistics (:class:`~.lf_stats.LFStats`, snorkel's ``LFAnalysis``) take the rows
in. One label model serves the whole topology: each partition cuts its rows into blocks of exactly
``refit_every`` rows and publishes a full block's exact vote counts (:class:`~.votes.VoteStats`) to the
job's global table (:mod:`~dawnstream.streams.global_table`); a row of block b, in any partition, gets the
probabilities of the model fitted on blocks 0..b-1 of every contributing partition, folded in block
order (with ``decay``, the sums are scaled after each block). Blocks are cut at exact row counts, not at
batch ends, so labels depend neither on batching nor on the number of workers, and a partition replayed
after a crash gets the same labels. Block 0 gets majority-vote probabilities. Rows whose model is not
ready are held (in the snapshot) until it is, until the partitions they wait for have no unread rows, or
for ``global_wait_ms``; then the newest ready model labels them (``model_block`` says which).

Models (``model``): ``matrix_completion`` (snorkel's LabelModel, fitted from the statistics; the
default), ``dependency_aware`` (the same, with the LF pairs that are not conditionally independent
found from the statistics, left out of the loss and down-weighted - used only while it is at least as
accurate as plain matrix completion on the latest gold rows, at least 100 covered ones; otherwise it
is plain matrix completion), ``triplets`` (FlyingSquid, closed
form, two classes), ``majority`` (majority vote, no fit).

Output, one row per input row: ``id``, the text, ``probs`` (list of k float64), ``label`` (argmax,
int8; -1 for a row no LF covers, unless ``uncovered: prior`` or an end model labels it), ``label_name``
(null with label -1), ``abstained`` (every LF abstained: the probabilities are the class prior),
``votes`` (the row of the label matrix, list of int8), ``labeled_by`` (the model that gave the
probabilities: ``matrix_completion``, ``triplets``, ``majority``, ``prior`` for a row no LF covers, or
``end_model:<version>`` once an end model labels those), ``model_block`` (int32: the last block the model
was fitted on; -1: majority vote), ``review`` (for the review queue: among the ``review_share`` of rows
the model is least sure about), and ``gold`` when the input has it.

Rows that carry a gold class (a dev set, or rows back from the review queue) are not training rows:
they move the LFs' empirical accuracies and the estimated class balance only, as snorkel keeps
``L_dev`` apart from ``L_train``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from dawnstream.errors import ConfigError
from dawnstream.logs import event, get_logger
from dawnstream.models.registry import ModelError, Registry
from dawnstream.models.text_model import HashedTextModel
from dawnstream.operators.base import Operator
from dawnstream.operators.labeling.label_model import (
    LabelModelParams,
    fit_dependency_aware,
    fit_matrix_completion,
    fit_triplets,
    majority_vote,
)
from dawnstream.operators.labeling.lf import LabelingFunction, LFBatch
from dawnstream.operators.labeling.lf_stats import LFStats
from dawnstream.operators.labeling.votes import ABSTAIN, VoteStats
from dawnstream.streams.global_table import GlobalTable

log = get_logger(__name__)
MODELS = ("matrix_completion", "dependency_aware", "triplets", "majority")
MARGIN_BINS = 200
MIN_REVIEW_HISTORY = 100
"""Covered rows seen before the review queue opens (a threshold from fewer would be noise)."""
FIRST_ROWS = 50
"""An LF that fails on every one of a partition's first this many rows is a mistake in its definition (a
label that is no class, a column the input lacks), not in the data: the job stops naming it. Fewer rows
would stop a job on one odd first row (a worker started before its data sees batches of one)."""
DEV_KEEP = 5000
"""Gold (dev) rows whose votes ``dependency_aware`` keeps to gate its rule on (the latest ones)."""
REVIEW_BLOCK = 100
"""The margin histogram takes in new rows every this many rows of the partition (exact counts, so the
review flags, like the labels, do not depend on batching)."""


_MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def untrusted_module(name: str) -> str | None:
    """Why ``name`` may not be imported as an LF module, or None. LF modules are trusted code: importing one
    runs it inside the worker, so before anything runs the name must be a module path whose top-level
    package is dawnstream's, belongs to an installed distribution (``importlib.metadata``) or lies in the
    interpreter's site-packages, or is already imported; never Python's standard library (``lfs: [this]``
    printed the Zen of Python)."""
    if not isinstance(name, str) or not _MODULE_PATH.fullmatch(name):
        return f"{name!r} is neither a module import path (e.g. mypackage.lfs) nor a .py file"
    top = name.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return f"{name!r} is part of Python's standard library, not an LF module"
    if top == "dawnstream" or name in sys.modules or top in importlib.metadata.packages_distributions():
        return None
    spec = importlib.util.find_spec(top)  # a top-level lookup: searches sys.path, runs nothing
    if spec is None:
        return None  # the import below reports it missing
    origin = spec.origin or next(iter(spec.submodule_search_locations or []), "")
    installed = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    if origin and any(os.path.abspath(origin).startswith(os.path.abspath(d) + os.sep) for d in installed):
        return None
    return (f"{name!r} is not part of an installed distribution (found at {origin}): LF modules are trusted code "
            "that runs in the worker, so only installed packages are imported by name")


HOW_TO_LOAD = ("list the file by its path, relative to the topology (lfs: [./my_lfs.py]), or install its package "
               "(pip install -e .) and list its import path (lfs: [mypackage.lfs])")


def is_lf_file(entry: str) -> bool:
    """True for an ``lfs`` entry that names a file (ends in ``.py`` or has a path separator) rather than a module."""
    return isinstance(entry, str) and (entry.endswith(".py") or "/" in entry or os.sep in entry)


def _import_file(path: str) -> Any:
    """Import the Python file ``path`` as a module of its own (named after the file's absolute path, so two
    topologies' ``lfs.py`` never collide); importing it again returns the same module."""
    full = os.path.abspath(path)
    name = "_dawnstream_lf_file_" + re.sub(r"\W", "_", full)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, full)
    if spec is None or spec.loader is None:
        raise ImportError(f"{full} is not a Python source file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # row-wise LFs' functions must be findable by module name (pickling, dataclasses)
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    return mod


def load_lfs(modules: list[str], path: str = "lfs") -> list[LabelingFunction]:
    """The LFs of the named modules or files, in order: each one's ``LFS`` list, else its module-level
    :class:`~.lf.LabelingFunction` objects in definition order.

    An entry is either an import path (a module imported by name only after :func:`untrusted_module`
    found it installed) or a ``.py`` file path (:func:`is_lf_file`; :func:`~dawnstream.streams.config.load_topology`
    makes relative paths relative to the topology file). Both are trusted code, chosen by whoever
    writes the topology; nothing is ever loaded from a topic or a file a user sent.

    Raises:
        ConfigError: a name that is not an installed module (checked before anything is imported), a file
            that does not exist, a module that cannot be imported or defines no LF, or two LFs that share a
            name; errors say both ways to list an LF module.
    """
    out: list[LabelingFunction] = []
    if not isinstance(modules, list) or not modules:
        raise ConfigError(path, "expected a non-empty list of LF modules: import paths, e.g. "
                                "[dawnstream.operators.labeling.lfs.sentiment], or .py files relative to the topology")
    for i, name in enumerate(modules):
        if is_lf_file(name):
            if not os.path.isfile(name):
                raise ConfigError(f"{path}.{i}", f"LF file {name!r} does not exist; {HOW_TO_LOAD}")
            load: Callable[[str], Any] = _import_file
        else:
            why = untrusted_module(name)
            if why is not None:
                raise ConfigError(f"{path}.{i}", f"{why}; or {HOW_TO_LOAD}")
            load = importlib.import_module
        try:
            mod = load(str(name))
        except ModuleNotFoundError as e:
            raise ConfigError(f"{path}.{i}", f"cannot import LF module {name!r}: {type(e).__name__}: {e}; "
                                             f"{HOW_TO_LOAD}") from None
        except Exception as e:  # noqa: BLE001 - any import failure is a config error naming the module
            raise ConfigError(f"{path}.{i}", f"cannot import LF module {name!r}: {type(e).__name__}: {e}") from None
        found = getattr(mod, "LFS", None)
        if found is None:
            found = [v for v in vars(mod).values() if isinstance(v, LabelingFunction)]
        found = [lf for lf in found if isinstance(lf, LabelingFunction)]
        if not found:
            raise ConfigError(f"{path}.{i}", f"module {name!r} defines no labeling function (an LFS list, or "
                                             "functions decorated with @labeling_function)")
        out.extend(found)
    names = [lf.name for lf in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(path, f"labeling function names must be unique; repeated: {dupes}")
    return out


@dataclass
class _Held:
    """Rows ingested and waiting for their block's model: ``block``, the id/text/gold columns, their votes
    ``L`` (``(rows, m)`` int8), gold classes (-1: none; None: no gold column) and when they were held
    (``time.monotonic()``, s; a restored worker's clock starts at its restore)."""

    block: int
    batch: pa.RecordBatch
    L: np.ndarray
    gold: np.ndarray | None
    since: float


class Label(Operator):
    """Labels rows with LFs and an online label model (module docstring).

    Args:
        lfs: import paths of LF modules.
        classes: class names, index = class (e.g. ``[rotten, fresh]``).
        text: the text column LFs tokenize.
        id: the row id column copied to the output.
        gold: optional column of gold classes (index or name; null: none) for empirical accuracies.
        model: ``matrix_completion``, ``dependency_aware``, ``triplets`` or ``majority``.
        refit_every: rows per block: each partition's blocks of this many rows are the model's units
            (a refit per block of all partitions).
        class_balance: the class prior: a list of k shares, ``uniform`` (snorkel's default), or
            ``estimate`` (from the gold labels seen so far; uniform until there are some).
        decay: at each refit the statistics are multiplied by ``1 - decay`` (0: remember every row).
        seed: the label model's seed (snorkel's ``seed``).
        review_share: the share of covered rows flagged ``review`` for a human: those with the smallest
            margin between the two likeliest classes (0 turns the queue off).
        end_model: registered name of the end model (:mod:`dawnstream.streams.end_model` trains it):
            once a version is promoted, rows no LF covers get its probabilities instead of the prior.
        registry: registry root (default ``$DAWNSTREAM_REGISTRY`` or ``~/.local/share/dawnstream/registry``).
        refresh_s: how often the promoted end-model version is looked up, s.
        uncovered: what a row no LF covers (and no end model labels) gets: ``abstain`` (``label`` -1 and
            ``label_name`` null, as snorkel's ``predict``; ``probs`` is the class prior) or ``prior`` (the
            prior's likeliest class).
        global_wait_ms: how long a row waits for its block's model when a partition it waits for still has
            unread rows (its worker is down or behind), ms; then the newest ready model labels it.

    Raises:
        ConfigError: bad parameters, naming the key.
    """

    kind = "label"
    stateful = True
    uses_global = True

    def __init__(self, lfs: list[str], classes: list[str], text: str = "text", id: str = "id",  # noqa: A002
                 gold: str | None = None, model: str = "matrix_completion", refit_every: int = 500,
                 class_balance: list[float] | str = "uniform", decay: float = 0.0, seed: int = 0,
                 review_share: float = 0.02, end_model: str | None = None, registry: str | None = None,
                 refresh_s: float = 2.0, uncovered: str = "abstain", global_wait_ms: int = 60_000,
                 name: str | None = None,
                 _path: str = "stages") -> None:
        super().__init__(name)
        base = _path.rsplit(".", 1)[0] if "." in _path else _path
        self.lfs = load_lfs(lfs, f"{base}.lfs")
        if not isinstance(classes, list) or len(classes) < 2:
            raise ConfigError(f"{base}.classes", "expected a list of at least two class names")
        if model not in MODELS:
            raise ConfigError(f"{base}.model", f"expected one of {', '.join(MODELS)}, got {model!r}")
        if model == "triplets" and len(classes) != 2:
            raise ConfigError(f"{base}.model", "the triplets model handles two classes; use matrix_completion")
        if model != "majority" and len(self.lfs) < 3:
            raise ConfigError(f"{base}.lfs", f"a label model needs at least 3 LFs, got {len(self.lfs)}")
        if int(refit_every) < 1:
            raise ConfigError(f"{base}.refit_every", f"expected at least 1 row, got {refit_every!r}")
        if not 0.0 <= float(review_share) < 1.0:
            raise ConfigError(f"{base}.review_share", f"expected a share in [0, 1), got {review_share!r}")
        if not isinstance(global_wait_ms, int) or isinstance(global_wait_ms, bool) or global_wait_ms < 0:
            raise ConfigError(f"{base}.global_wait_ms", f"expected a whole number of ms >= 0, got {global_wait_ms!r}")
        if uncovered not in ("abstain", "prior"):
            raise ConfigError(f"{base}.uncovered", f"expected abstain or prior, got {uncovered!r}")
        self.uncovered = uncovered
        if not 0.0 <= float(decay) < 1.0:
            raise ConfigError(f"{base}.decay", f"expected a number in [0, 1), got {decay!r}")
        self.prior: np.ndarray | None = None
        if isinstance(class_balance, list):
            p = np.asarray(class_balance, float)
            if p.shape != (len(classes),) or np.any(p <= 0):
                raise ConfigError(f"{base}.class_balance",
                                  f"expected {len(classes)} positive shares, got {class_balance!r}")
            self.prior = p / p.sum()
        elif class_balance not in ("uniform", "estimate"):
            raise ConfigError(f"{base}.class_balance",
                              f"expected a list of shares, uniform or estimate, got {class_balance!r}")
        self.classes = [str(c) for c in classes]
        self.k = len(classes)
        if len(set(self.classes)) != self.k:
            raise ConfigError(f"{base}.classes", f"class names must be unique, got {classes!r}")
        for lf in self.lfs:
            for v in lf.labels:
                if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 <= int(v) < self.k:
                    raise ConfigError(f"{base}.lfs", f"labeling function {lf.name!r} votes {v!r}: expected a class "
                                                     f"index 0..{self.k - 1} ({', '.join(self.classes)})")
        self._lfs_path = f"{base}.lfs"
        self._first_rows = 0  # rows of the partition's first FIRST_ROWS seen, and each LF's errors on them
        self._first_errors = np.zeros(len(self.lfs), np.int64)
        self.text, self.id, self.gold = text, id, gold
        self.model, self.refit_every, self.decay, self.seed = model, int(refit_every), float(decay), int(seed)
        self.estimate_balance = class_balance == "estimate"
        names = [lf.name for lf in self.lfs]
        self.stats = LFStats(names, self.k)  # this partition's LF table
        self.topology_stats = LFStats(names, self.k)  # every partition's, over the folded blocks
        # The model's statistics: every contributing partition's closed blocks, folded in block order.
        self.votes = VoteStats(len(self.lfs), self.k)
        self.gold_counts = np.zeros(self.k, np.int64)  # gold classes of the folded blocks
        self._dev_L = np.zeros((0, len(self.lfs)), np.int8)  # dependency_aware: the latest DEV_KEEP gold rows
        self._dev_y = np.zeros(0, np.int64)
        self.folded = -1  # the last block folded into the statistics above (-1: none)
        self.params: LabelModelParams | None = None  # fitted on blocks 0..folded
        # This partition's open block: its rows' statistics, published when it fills.
        self.block, self.filled = 0, 0
        self._delta = VoteStats(len(self.lfs), self.k)
        self._delta_lf = LFStats(names, self.k)
        self._delta_gold = np.zeros(self.k, np.int64)
        self._delta_dev_L = np.zeros((0, len(self.lfs)), np.int8)
        self._delta_dev_y = np.zeros(0, np.int64)
        self._held: list[_Held] = []  # rows ingested, not yet labelled (their block's model is not ready)
        self._outbox: list[tuple[str, bytes]] = []
        self.global_table = GlobalTable()  # a runner replaces it with its worker's (shared by all partitions)
        self.global_partitions: set[int] | None = None  # None: this partition alone
        self.global_drained: set[int] = set()  # partitions read to their end (the runner's view)
        self._late_logged = -1.0
        self.hold_until_tick = False  # a Kafka runner labels held rows at ticks only (see _release)
        self.global_wait_s = int(global_wait_ms) / 1000.0
        self.rows = 0  # rows of this partition labelled so far
        self.refits = 0
        self.stale_rows = 0  # rows labelled with an older model after waiting global_wait_ms
        self.tick_changes = 0  # folds at ticks: the runner snapshots a partition whose count moved
        self.review_share = float(review_share)
        self._margins = np.zeros(MARGIN_BINS)  # margins of the rows before the last block boundary
        self._pending = np.zeros(MARGIN_BINS)  # since then (folded in at the next one)
        self.end_model = end_model or None
        self.registry = (Registry(registry) if registry else Registry()) if self.end_model else None
        self.refresh_s = float(refresh_s)
        self._end: HashedTextModel | None = None
        self.end_version = 0
        self._end_checked = -1e18
        self._end_refused: set[int] = set()

    def required_columns(self) -> set[str]:
        return {self.text, self.id}

    def produced_columns(self) -> set[str]:
        return {"probs", "label", "label_name", "abstained", "votes", "review", "labeled_by", "model_block"}

    def passes_through(self) -> bool:
        return False

    # -- processing ---------------------------------------------------------------------------
    def label_matrix(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, m)`` int8 votes and ``(rows, m)`` bool errors of every LF on ``batch``."""
        lb = LFBatch(batch, self.text)
        L = np.empty((batch.num_rows, len(self.lfs)), np.int8)
        errors = np.zeros((batch.num_rows, len(self.lfs)), bool)
        for j, lf in enumerate(self.lfs):
            votes, err = lf.apply(lb)
            bad = (votes < ABSTAIN) | (votes >= self.k)
            if bad.any():
                lf.last_error = f"voted {int(votes[bad][0])}, outside -1..{self.k - 1} ({', '.join(self.classes)})"
            L[:, j] = np.where(bad, ABSTAIN, votes)  # a vote outside the classes counts as an error
            errors[:, j] = err | bad
        return L, errors

    def _check_first_rows(self, errors: np.ndarray) -> None:
        """Count each LF's errors on the partition's first :data:`FIRST_ROWS` rows; once there are that many,
        an LF that failed on all of them stops the job (before this batch moves any state).

        Raises:
            ConfigError: at ``stages.N.lfs``, naming each such LF and its last error.
        """
        if self._first_rows >= FIRST_ROWS:
            return
        take = min(len(errors), FIRST_ROWS - self._first_rows)
        counts = self._first_errors + errors[:take].sum(axis=0)
        if self._first_rows + take >= FIRST_ROWS:
            dead = np.flatnonzero(counts >= FIRST_ROWS).tolist()
            if dead:
                raise ConfigError(self._lfs_path, f"labeling function(s) failed on every one of the first {FIRST_ROWS} "
                                  "rows - a mistake in the LF, not in the data; fix it and restart: "
                                  + "; ".join(f"{self.lfs[j].name}: {self.lfs[j].last_error}" for j in dead))
        self._first_rows += take
        self._first_errors = counts


    def _gold_codes(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray] | None:
        """Gold class per row (-1: none) and the rows whose gold is not a class; None without a gold column."""
        if self.gold is None or self.gold not in batch.schema.names:
            return None
        col = batch.column(self.gold)
        if pa.types.is_null(col.type):
            return None
        return self.class_codes(col, self.gold)

    def class_codes(self, col: pa.Array, name: str = "gold") -> tuple[np.ndarray, np.ndarray]:
        """``(rows,)`` int64 class index per value of ``col`` (class names or indices; -1: null or not a class)
        and ``(rows,)`` bool: not null and not a class.

        Raises:
            TypeError: ``col`` (called ``name`` in the message) holds neither strings nor numbers.
        """
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            idx = pc.fill_null(pc.index_in(col, value_set=pa.array(self.classes)), -1).to_numpy().astype(np.int64)
            bad = (idx < 0) & valid
        elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            num = np.asarray(pc.fill_null(pc.cast(col, pa.float64()), -1.0).to_numpy(zero_copy_only=False))
            whole = np.isfinite(num) & (num == np.floor(num)) & (num >= 0) & (num < self.k)
            bad = ~whole & valid
            idx = np.where(whole & valid, num, -1).astype(np.int64)
        else:
            raise TypeError(f"column {name!r} is {col.type}: gold labels are class names or indices")
        return idx, bad

    def _not_a_class(self, value: Any) -> str:
        return f"column {self.gold!r}: {value!r:.60} is not a class; expected one of {self.classes} or 0..{self.k - 1}"

    def bad_rows(self, batch: pa.RecordBatch) -> dict[int, str]:
        got = self._gold_codes(batch)
        if got is None or not got[1].any():
            return {}
        col = batch.column(self.gold)
        return {i: self._not_a_class(col[i].as_py()) for i in np.flatnonzero(got[1]).tolist()}

    def _gold(self, batch: pa.RecordBatch) -> np.ndarray | None:
        got = self._gold_codes(batch)
        if got is None:
            return None
        idx, bad = got
        if bad.any():
            raise ValueError(self._not_a_class(batch.column(self.gold)[int(np.flatnonzero(bad)[0])].as_py()))
        return idx

    def _predict(self, L: np.ndarray) -> np.ndarray:
        if self.params is None or self.model == "majority":
            probs = majority_vote(L, self.k)
            if self.prior is not None or self.estimate_balance:
                none = (L == ABSTAIN).all(axis=1)
                probs[none] = self._class_prior()
            return probs
        return self.params.predict_proba(L)

    def _class_prior(self) -> np.ndarray:
        if self.prior is not None:
            return self.prior
        if self.estimate_balance and self.gold_counts.sum() > 0:
            smoothed = self.gold_counts + 1.0
            return smoothed / smoothed.sum()
        return np.full(self.k, 1.0 / self.k)

    def refit(self, with_open_block: bool = False) -> None:
        """Fit the label model on the folded statistics (no-op for ``majority`` and before any row); with
        ``with_open_block``, on those plus this partition's open block (``dawnstream lfs``: every row read)."""
        votes = self.votes
        if with_open_block:
            S, n = self._delta.counts()
            votes = VoteStats(len(self.lfs), self.k, self.votes.n + n, self.votes.S + S)
        if self.model == "majority" or votes.n <= 0:
            return
        p = self._class_prior()
        if self.model == "triplets":
            self.params = fit_triplets(votes, p)
        elif self.model == "dependency_aware":
            self.params = fit_dependency_aware(votes, p, seed=self.seed, held_out=(self._dev_L, self._dev_y))
        else:
            self.params = fit_matrix_completion(votes, p, seed=self.seed)
        self.refits += 1

    # -- one model per topology: blocks, the global table, held rows ----------------------------
    def _key(self, block: int, partition: int) -> str:
        return f"{self.name}/{block}/{partition}"

    def _publish(self) -> None:
        """Close this partition's open block: its statistics go to the global table (and the outbox the runner
        produces in the batch's transaction). The value depends on the block's rows alone."""
        S, n = self._delta.counts()
        value = orjson.dumps({"n": n, "S": S.ravel().tolist(), "gold": self._delta_gold.tolist(),
                              "dev_L": self._delta_dev_L.ravel().tolist(), "dev_y": self._delta_dev_y.tolist(),
                              "lf": self._delta_lf.state()})
        key = self._key(self.block, self.partition or 0)
        self.global_table.put(key, value)
        self._outbox.append((key, value))
        self.block, self.filled = self.block + 1, 0
        self._delta = VoteStats(len(self.lfs), self.k)
        self._delta_lf = LFStats(self.stats.names, self.k)
        self._delta_gold = np.zeros(self.k, np.int64)
        self._delta_dev_L = np.zeros((0, len(self.lfs)), np.int8)
        self._delta_dev_y = np.zeros(0, np.int64)

    def take_published(self) -> list[tuple[str, bytes]]:
        out, self._outbox = self._outbox, []
        return out

    def _contributors(self) -> list[int]:
        return sorted(self.global_partitions) if self.global_partitions else [self.partition or 0]

    def _fold_next(self) -> bool:
        """Fold block ``folded + 1`` into the model's statistics once every contributing partition closed it,
        and refit; False while one has not. The fitted model is shared through the table's cache, so a worker
        fits each block's model once, not once per partition."""
        b = self.folded + 1
        parts = self._contributors()
        values = [self.global_table.get(self._key(b, p)) for p in parts]
        if any(v is None for v in values):
            return False
        d = len(self.lfs) * self.k
        for v in values:
            rec = orjson.loads(v)  # type: ignore[arg-type]
            self.votes.add_counts(np.asarray(rec["S"], np.int64).reshape(d, d), int(rec["n"]))
            self.gold_counts += np.asarray(rec["gold"], np.int64)
            self.topology_stats = self.topology_stats.merge(LFStats.from_state(rec["lf"]))
            if self.model == "dependency_aware" and rec["dev_y"]:
                dev_L = np.asarray(rec["dev_L"], np.int8).reshape(-1, len(self.lfs))
                self._dev_L = np.concatenate([self._dev_L, dev_L])[-DEV_KEEP:]
                self._dev_y = np.concatenate([self._dev_y, np.asarray(rec["dev_y"], np.int64)])[-DEV_KEEP:]
        self.folded = b
        cache_key = (self.name, b, tuple(parts))
        cached = self.global_table.cache.get(cache_key)
        if cached is not None:
            self.params = cached
            self.refits += 1
        else:
            self.refit()
            if self.params is not None:
                self.global_table.cache[cache_key] = self.params
        if self.decay:
            self.votes.scale(1.0 - self.decay)
            self._margins *= 1.0 - self.decay
        return True

    def _needs_model(self) -> bool:
        """False when labels do not depend on other rows at all (majority vote with a fixed class prior)."""
        return self.model != "majority" or self.estimate_balance

    def _release(self, force: bool = False, fold: bool = True) -> list[pa.RecordBatch]:
        """Label held rows in order: a row of block b gets the model fitted on blocks 0..b-1 of every contributing
        partition, as soon as they are all in the global table. A row that has waited ``global_wait_ms`` (a
        partition ran dry, or its worker is down) - or every row, with ``force`` - gets the newest model
        that is ready instead, and its ``model_block`` says which. ``fold`` False: only the rows the model
        already fitted serves (what a batch may label in a Kafka worker; see :meth:`process`)."""
        out: list[pa.RecordBatch] = []
        while self._held:
            head = self._held[0]
            if not self._needs_model() or head.block <= self.folded + 1:
                out.append(self._label(self._held.pop(0), stale=False))
            elif not fold:
                break
            elif self._fold_next():
                self.tick_changes += 1
                continue
            elif force or self._give_up(head):
                out.append(self._label(self._held.pop(0), stale=True))
            else:
                break
        while fold and not self._held and self._needs_model() and self._fold_next():
            self.tick_changes += 1  # the model the next rows need (and the LF table's accuracies), fitted ahead
        return out

    def _give_up(self, head: _Held) -> bool:
        """True when the next block's model cannot come soon: each partition it waits for has no unread rows
        (``global_drained``: the runner saw it read to its end, and read the global topic after that), or the
        rows have waited ``global_wait_ms``."""
        nxt = self.folded + 1
        missing = [p for p in self._contributors() if self._key(nxt, p) not in self.global_table]
        drained = bool(missing) and set(missing) <= self.global_drained
        waited = time.monotonic() - head.since >= self.global_wait_s
        if not (drained or waited):
            return False
        if waited and not drained and head.since > self._late_logged:
            self._late_logged = head.since
            event(log, "label.model_late", level=logging.WARNING, stage=self.name, partition=self.partition,
                  rows=head.batch.num_rows, block=head.block, model_block=self.folded,
                  waiting_for=f"block {nxt} of partition(s) {missing}", waited_s=self.global_wait_s)
        return True

    def on_tick(self, now_ms: int) -> list[pa.RecordBatch]:
        return self._release()

    def flush(self) -> list[pa.RecordBatch]:
        return self._release(force=True)

    @property
    def holding(self) -> int:
        """Rows ingested and not yet labelled."""
        return sum(h.batch.num_rows for h in self._held)

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        n = batch.num_rows
        if n == 0:
            return []
        t = batch.schema.field(self.text).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
            raise TypeError(f"column {self.text!r} is {t}: the label stage's LFs read text (strings)")
        L, errors = self.label_matrix(batch)
        gold = self._gold(batch)
        self._check_first_rows(errors)
        has_gold = np.zeros(n, bool) if gold is None else gold >= 0
        keep = [c for c in dict.fromkeys([self.id, self.text, self.gold]) if c is not None and c in batch.schema.names]
        rows = batch.select(keep)
        now = time.monotonic()
        start = 0
        while start < n:
            # Blocks of exactly refit_every rows: the same blocks however the stream is batched.
            stop = min(n, start + self.refit_every - self.filled)
            seg, train = L[start:stop], ~has_gold[start:stop]
            self._delta.add(seg[train])
            self.stats.add(seg[train], errors[start:stop][train])
            self._delta_lf.add(seg[train], errors[start:stop][train])
            if gold is not None and not train.all():
                g = gold[start:stop][~train]
                self.stats.add_gold(seg[~train], g)
                self._delta_lf.add_gold(seg[~train], g)
                self._delta_gold += np.bincount(g, minlength=self.k)
                if self.model == "dependency_aware":
                    self._delta_dev_L = np.concatenate([self._delta_dev_L, seg[~train]])[-DEV_KEEP:]
                    self._delta_dev_y = np.concatenate([self._delta_dev_y, g])[-DEV_KEEP:]
            self._held.append(_Held(self.block, rows.slice(start, stop - start), seg,
                                    None if gold is None else gold[start:stop], now))
            self.filled += stop - start
            if self.filled == self.refit_every:
                self._publish()
            start = stop
        # In a Kafka worker a batch labels only the rows the model already fitted serves; folding a new block
        # (and giving up waiting) happens at ticks, each in a transaction with this partition's snapshot. A replay
        # after a crash (whose table is fuller than the crashed run's was) then starts from the last fold and
        # labels exactly what the crashed run labelled: nothing twice, nothing lost.
        return self._release(fold=not self.hold_until_tick)

    def _label(self, held: _Held, stale: bool) -> pa.RecordBatch:
        """Label one held slice with the current model (the review histogram moves every REVIEW_BLOCK rows)."""
        L, n = held.L, held.batch.num_rows
        has_gold = np.zeros(n, bool) if held.gold is None else held.gold >= 0
        probs = np.empty((n, self.k))
        review = np.zeros(n, bool)
        by = np.empty(n, dtype=object)
        start = 0
        while start < n:
            stop = min(n, start + REVIEW_BLOCK - self.rows % REVIEW_BLOCK)
            seg = L[start:stop]
            probs[start:stop] = self._predict(seg)
            by[start:stop] = "majority" if self.params is None or self.model == "majority" else self.model
            review[start:stop] = self._review(seg, probs[start:stop]) & ~has_gold[start:stop]
            self.rows += stop - start
            if self.rows % REVIEW_BLOCK == 0:  # what flags use moves only here: batching-independent
                self._margins += self._pending
                self._pending = np.zeros(MARGIN_BINS)
            start = stop
        if stale:
            self.stale_rows += n
        batch, gold = held.batch, held.gold
        uncovered = (L == ABSTAIN).all(axis=1)
        by[uncovered] = "prior"
        end = self._end_model()
        if end is not None and uncovered.any():
            texts = pc.fill_null(batch.column(self.text), "").filter(pa.array(uncovered)).to_pylist()
            try:  # the state above has moved: an end model that fails here must not cost the batch
                end_probs = end.predict_proba(texts)
                if end_probs.shape != (len(texts), self.k) or not np.isfinite(end_probs).all():
                    raise ModelError(f"it gave {end_probs.shape} probabilities for {len(texts)} texts")
            except Exception as e:  # noqa: BLE001
                self._refuse_end(self.end_version, e)
                self._end, self.end_version = None, 0
            else:
                probs[uncovered] = end_probs
                by[uncovered] = f"end_model:{self.end_version}"
        return self._output(batch, L, probs, gold, review, by, self.folded if self._needs_model() else -1)

    def _end_model(self) -> HashedTextModel | None:
        """The promoted end model, looked up every ``refresh_s``. A version that fails to load, or to label a
        probe text with k finite probabilities, is refused for good (logged once); the last good one stays."""
        if self.registry is None or self.end_model is None:
            return None
        now = time.monotonic()
        if now - self._end_checked >= self.refresh_s:
            self._end_checked = now
            v: int | None = None
            try:
                v = self.registry.promoted_version(self.end_model)
                if v is not None and v != self.end_version and v not in self._end_refused:
                    model = HashedTextModel.from_npz(self.registry.get(self.end_model, v).read_bytes())
                    probe = model.predict_proba(["a probe text"])
                    if probe.shape != (1, self.k) or not np.isfinite(probe).all():
                        raise ModelError(f"it labels a text with {probe.shape[-1]} probabilities; "
                                         f"this stage has {self.k} classes")
                    self._end, self.end_version = model, v
            except Exception as e:  # noqa: BLE001 - a bad artifact must not stop labeling
                self._refuse_end(v, e)
        return self._end

    def _refuse_end(self, version: int | None, e: BaseException) -> None:
        if version is not None:
            self._end_refused.add(version)
        event(log, "label.end_model_refused", level=logging.WARNING, model=self.end_model, version=version,
              error=str(e) if isinstance(e, ModelError) else f"{type(e).__name__}: {e}",
              keeps=self.end_version or None)

    def _review(self, L: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Rows for the review queue: covered rows whose margin (top probability minus the next) is
        among the lowest ``review_share`` of the margins seen so far (a histogram, so the threshold
        tunes itself to the stream). The histogram moves every :data:`REVIEW_BLOCK` rows: batching-independent."""
        covered = (L != ABSTAIN).any(axis=1)
        top2 = np.sort(probs, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        flagged = np.zeros(len(L), bool)
        total = self._margins.sum()
        if self.review_share > 0 and total >= MIN_REVIEW_HISTORY:
            cdf = np.cumsum(self._margins) / total
            edge = (int(np.searchsorted(cdf, self.review_share)) + 1) / MARGIN_BINS
            flagged = covered & (margin < edge)
        if self.params is None and self.model != "majority":
            return flagged  # majority-vote margins (before the first fit) say nothing of the model's
        m = margin[covered]
        self._pending += np.bincount(np.minimum((m * MARGIN_BINS).astype(int), MARGIN_BINS - 1), minlength=MARGIN_BINS)
        return flagged

    def _output(self, batch: pa.RecordBatch, L: np.ndarray, probs: np.ndarray,
                gold: np.ndarray | None, review: np.ndarray, by: np.ndarray, model_block: int) -> pa.RecordBatch:
        label = probs.argmax(axis=1).astype(np.int8)
        if self.uncovered == "abstain":
            label[by == "prior"] = ABSTAIN
        names = np.asarray(self.classes + [None], dtype=object)[label]  # index -1: None
        k, m = self.k, L.shape[1]
        cols: dict[str, pa.Array] = {
            self.id: batch.column(self.id),
            self.text: batch.column(self.text),
            "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel(), pa.float64()), k).cast(
                pa.list_(pa.float64())),
            "label": pa.array(label, pa.int8()),
            "label_name": pa.array(names, pa.string()),
            "abstained": pa.array((L == ABSTAIN).all(axis=1), pa.bool_()),
            "votes": pa.FixedSizeListArray.from_arrays(pa.array(L.ravel(), pa.int8()), m).cast(pa.list_(pa.int8())),
            "review": pa.array(review, pa.bool_()),
            "labeled_by": pa.array(by, pa.string()),
            "model_block": pa.array(np.full(len(label), model_block, np.int32), pa.int32()),
        }
        if gold is not None:
            cols["gold"] = pa.array(np.where(gold >= 0, gold, 0), pa.int8(), mask=gold < 0)
        return pa.RecordBatch.from_pydict(cols)

    # -- observability and state --------------------------------------------------------------
    def summary(self, scope: str = "partition") -> list[dict[str, Any]]:
        """The LF table: snorkel's ``lf_summary`` columns, plus the label model's estimated accuracy; over this
        partition's rows (``partition``) or every partition's folded blocks (``topology``)."""
        rows = (self.topology_stats if scope == "topology" else self.stats).summary()
        if self.params is not None:
            for row, acc in zip(rows, self.params.accuracies(), strict=True):
                row["learned_accuracy"] = float(acc)
        for row, lf in zip(rows, self.lfs, strict=True):
            if lf.last_error is not None:
                row["last_error"] = lf.last_error
        return rows

    def panel(self) -> dict[str, Any]:
        """The LF table (:meth:`summary`, this partition's) and the label model's progress."""
        return {"kind": "lf_table", "lfs": self.summary(), "lfs_topology": self.summary("topology"),
                "rows": self.rows + self.holding, "refits": self.refits,
                "model_block": self.folded, "holding": self.holding, "stale_rows": self.stale_rows,
                "end_model_version": self.end_version}

    def gauges(self) -> dict[str, float]:
        """``/metrics`` series: ``rows``, ``refits``, and per LF ``coverage.``, ``overlaps.``, ``conflicts.``,
        ``errors.``, ``learned_accuracy.`` and (with gold) ``emp_accuracy.``."""
        out = {"rows": float(self.rows + self.holding), "refits": float(self.refits),
               "end_model_version": float(self.end_version), "model_block": float(self.folded),
               "holding": float(self.holding), "stale_rows": float(self.stale_rows)}
        for row in self.summary():
            for key in ("coverage", "overlaps", "conflicts", "errors", "learned_accuracy", "emp_accuracy"):
                if key in row:
                    out[f"{key}.{row['lf']}"] = float(row[key])
        return out

    def _state(self) -> Any:
        S, n = self._delta.counts()
        return {"votes": self.votes.state(), "stats": self.stats.state(), "rows": self.rows, "refits": self.refits,
                "gold_counts": self.gold_counts.tolist(), "margins": self._margins.tolist(),
                "pending": self._pending.tolist(), "dev_L": self._dev_L.tolist(), "dev_y": self._dev_y.tolist(),
                "first_rows": self._first_rows, "first_errors": self._first_errors.tolist(),
                "params": None if self.params is None else self.params.state(),
                "folded": self.folded, "block": self.block, "filled": self.filled, "stale_rows": self.stale_rows,
                "topology_stats": self.topology_stats.state(),
                "delta": {"n": n, "S": S.ravel().tolist(), "gold": self._delta_gold.tolist(),
                          "lf": self._delta_lf.state(), "dev_L": self._delta_dev_L.ravel().tolist(),
                          "dev_y": self._delta_dev_y.tolist()},
                "held": [_held_state(h) for h in self._held]}

    def _load_state(self, state: Any) -> None:
        if not state:
            return
        if state["stats"]["names"] != self.stats.names:
            raise ValueError(f"the snapshot's LFs {state['stats']['names']} are not this stage's {self.stats.names}: "
                             "a changed LF set starts a new label model (use a new topology name)")
        m, d = len(self.lfs), len(self.lfs) * self.k
        self.votes = VoteStats.from_state(state["votes"])
        self.stats = LFStats.from_state(state["stats"])
        self.rows, self.refits = int(state["rows"]), int(state["refits"])
        self.gold_counts = np.asarray(state["gold_counts"], np.int64)
        self._margins, self._pending = np.asarray(state["margins"], float), np.asarray(state["pending"], float)
        self._dev_L = np.asarray(state.get("dev_L", []), np.int8).reshape(-1, m)
        self._dev_y = np.asarray(state.get("dev_y", []), np.int64)
        self._first_rows = int(state.get("first_rows", FIRST_ROWS))  # older snapshots: past the check
        self._first_errors = np.asarray(state.get("first_errors", np.zeros(m)), np.int64)
        self.params = None if state["params"] is None else LabelModelParams.from_state(state["params"])
        self._delta = VoteStats(m, self.k)
        self._held = []
        if "block" not in state:  # a per-partition model's snapshot: its blocks so far count as folded
            self.block, self.filled = divmod(self.rows, self.refit_every)
            self.folded = self.block - 1
            S, n = self.votes.counts()  # the open block's exact counts: they move to the block's delta
            self._delta.add_counts(S, n)
            self.votes.add_counts(-S, -n)
            return
        self.folded, self.block, self.filled = int(state["folded"]), int(state["block"]), int(state["filled"])
        self.stale_rows = int(state.get("stale_rows", 0))
        delta = state["delta"]
        self._delta.add_counts(np.asarray(delta["S"], np.int64).reshape(d, d), int(delta["n"]))
        self._delta_gold = np.asarray(delta["gold"], np.int64)
        self._delta_lf = LFStats.from_state(delta["lf"])
        self.topology_stats = LFStats.from_state(state["topology_stats"])
        self._delta_dev_L = np.asarray(delta["dev_L"], np.int8).reshape(-1, m)
        self._delta_dev_y = np.asarray(delta["dev_y"], np.int64)
        now = time.monotonic()
        self._held = [_held_from(h, m, now) for h in state["held"]]


def _held_state(h: _Held) -> dict[str, Any]:
    import base64

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, h.batch.schema) as w:
        w.write_batch(h.batch)
    return {"block": h.block, "rows": base64.b64encode(sink.getvalue().to_pybytes()).decode(),
            "L": h.L.ravel().tolist(), "gold": None if h.gold is None else h.gold.tolist()}


def _held_from(s: dict[str, Any], m: int, since: float) -> _Held:
    import base64

    batch = pa.ipc.open_stream(base64.b64decode(s["rows"])).read_next_batch()
    gold = None if s["gold"] is None else np.asarray(s["gold"], np.int64)
    return _Held(int(s["block"]), batch, np.asarray(s["L"], np.int8).reshape(-1, m), gold, since)
