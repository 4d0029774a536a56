"""The ``cascade`` stage: NoScope's difference detector -> specialized model -> reference model, per camera,
with its whole life cycle in the stream (Kang et al., VLDB'17; the streaming life cycle is ours).

Per camera (the ``camera_id`` column), frames go through phases:

1. **bootstrap**: every frame goes to the reference model; its thumbnail, difference score and label are
   kept. When at least ``bootstrap`` frames are kept and both parts of the temporal split hold
   ``min_per_class`` frames of each class (:func:`~.training.ready`), training starts.
2. **training**: a background thread trains the grid, measures the stages' costs and chooses the
   thresholds from the FN/FP targets (:func:`~.training.fit_cascade`); frames keep going to the
   reference model meanwhile, so nothing pauses. The model takes over at a fixed frame,
   ``swap_after`` frames after training started (on a live camera that is time enough; a replay
   faster than real time waits there for the thread). A fixed frame, and a model registered under
   its training frames (a replay after a crash finds it and uses it), make the labels a function of
   the input alone: exactly-once gives the same labels as an uninterrupted run.
3. **cascade**: after a *fragile* answer of the reference model (one a typical frame-to-frame jitter of
   its boxes could flip, :mod:`.fragility`; the jitter is measured on the bootstrap frames), the
   reference model decides; otherwise a frame whose difference score is below ``delta`` repeats the
   last label, at most ``max_run`` frames in a row (the longest run of repeats that stayed right on the
   bootstrap: a scene that changes slowly, by less than ``delta`` in all, does not keep a stale label for
   longer than the evidence bore out); otherwise the specialized model's P(true) decides below ``c_low`` /
   above ``c_high``, unless its answer would change the label (``confirm_changes``); otherwise the
   reference model.
   A ``sample`` share of frames (chosen by a hash of camera and frame index) also goes to the reference
   model, to estimate live agreement; the reference's answer is then the frame's label (and the one later
   frames copy): a disagreement is evidence for the live estimate, never an answer thrown away.
4. **the live test**: the checks since the swap estimate the cascade's FN and FP rates (a frame the
   reference decided counts as a check without error) and, per deciding stage, its disagreements. When
   the one-sided Clopper-Pearson lower bound (95%, :mod:`.bounds`) of either rate is above its target -
   the stage is that sure the plan misses it - or the agreement falls below ``min_agreement`` over the
   last ``window`` checks, an **alarm** fires: the camera goes back to bootstrap at once (every frame to
   the reference model), logs ``cascade.alarm`` with the reason and the per-stage counts, counts it in
   the ``alarms`` gauge, and the model is retrained on the reference's fresh labels. For
   ``boost_frames`` frames after each swap the checks are sampled at ``boost_sample`` (20%) rather than
   ``sample``, and for ``boost_frames`` frames after each disagreement at ``alert_sample`` (by default
   ``boost_sample`` too): a model that is wrong on this camera is caught within tens of frames, and one
   error is followed up until the test can tell a bad plan from bad luck.
5. **probation**: a plan promises only what its evidence bounds. The one-sided Clopper-Pearson upper
   bounds (95%) of its FN and FP rates, from the threshold-choosing frames' counts plus the live checks
   (:meth:`~.optimizer.Plan.bounds`), must be within the targets; 1% needs about 300 frames of a class
   checked without an error (:func:`needed`), many more than a bootstrap's choosing blocks hold. Until
   the bounds are within the targets the stage says so (``cascade.probation`` at the swap, the
   ``cameras_proven``, ``fn_bound`` and ``fp_bound`` gauges) and samples its checks at ``boost_sample``:
   the reference model labels that share of the frames until the evidence is there
   (``cascade.proven``), and a plan that misses its targets meets the live test sooner.
6. **the reference's own flips**: where the reference model's answer flips for a single frame (a box centre
   crossing the region's edge for one frame, a person missed for one frame) on more of a class's bootstrap
   frames than its target (the plan's ``fn_floor`` / ``fp_floor``, :func:`~.optimizer.flicker_rates`), no
   thresholds help: a cheaper stage answers such a frame as its neighbours. The checks are then sampled
   at no less than :meth:`~.optimizer.Plan.check_share` (``1 - target / floor``), so the flips the
   cheaper stages get wrong stay within the target; ``cascade.flicker`` says so at the swap, with the
   targets that would need no such checks.

Frame geometry is data: a frame of any size decodes (frames that do not are refused alone, before any
camera's state moves, and go to the dead-letter topic with the reason); the difference detector's ``roi``
is clipped to each frame, so a frame smaller than the ``roi`` expects still gets a crop of at least one pixel.

Output, one row per frame in order: ``camera_id``, ``frame_index``, ``timestamp_ms``, ``label`` (bool),
``count`` (int64, the reference's box count where it ran and ``count: true``; else null),
``decided_by`` (``difference`` | ``specialized`` | ``reference``), ``confidence`` (float64: the
specialized model's probability of its answer, 1.0 for the reference, the repeated frame's for the
difference detector), ``phase``, ``model_version`` (null before the first swap), ``reference_ms``,
``sampled`` (the frame was a live-agreement sample: a cheaper stage answered, the reference model
checked it, and its answer is the label).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from dawnstream.errors import ConfigError
from dawnstream.logs import event, get_logger
from dawnstream.models.artifacts import from_npz, to_npz
from dawnstream.models.detectors import Detection
from dawnstream.models.registry import Registry
from dawnstream.models.specialized import OnnxSpecialized, SpecConfig
from dawnstream.operators.base import Operator
from dawnstream.operators.video.bounds import lower_bound
from dawnstream.operators.video.detect import decode, reference_query
from dawnstream.operators.video.difference import frame_mse, thumbnail
from dawnstream.operators.video.fragility import SCORE_FLOOR, fragile, jitter, margins
from dawnstream.operators.video.geometry import clip_crop, pixel_box
from dawnstream.operators.video.optimizer import Plan
from dawnstream.operators.video.training import FittedCascade, fit_cascade, ready

log = get_logger(__name__)
JITTER_KEPT = 4000
"""Frame-to-frame box changes kept per camera (the latest)."""
STAGES = ("difference", "specialized", "reference")
LIVE_KEYS = ("fn", "fp", *STAGES)
BOUND_GAUGES = ("fn_bound", "fp_bound", "cameras_proven", "check_share")
"""What the cameras' plans can promise now (:meth:`Cascade.gauges`): the worst FN and FP upper bounds, how
many cameras left probation, and the largest least check share the reference model's one-frame flips
impose (:meth:`~.optimizer.Plan.check_share`: why a camera's reference share stays high)."""


def live_gauge(key: str) -> str:
    """The ``/metrics`` name of a live estimate: ``live_fn_rate``, ``live_fp_rate``, ``live_error_<stage>``."""
    return f"live_{'error_' if key in STAGES else ''}{key}{'_rate' if key in ('fn', 'fp') else ''}"
ALPHA = 0.05
"""The live test fires when the one-sided Clopper-Pearson lower bound of the live FN or FP rate at 1 - ALPHA
is above the target (:mod:`.bounds`): the stage is 95% sure the target is missed."""
TRAINING = threading.Lock()
"""One training at a time per process: torch's ONNX export is not thread-safe, and cameras share the cores."""
OUT_SCHEMA = pa.schema([("camera_id", pa.string()), ("frame_index", pa.int64()), ("timestamp_ms", pa.int64()),
                        ("label", pa.bool_()), ("count", pa.int64()), ("decided_by", pa.string()),
                        ("confidence", pa.float64()), ("phase", pa.string()), ("model_version", pa.int64()),
                        ("reference_ms", pa.float64()), ("sampled", pa.bool_())])


def needed(target: float, alpha: float = ALPHA) -> int:
    """Frames of a class, checked without an error, for the Clopper-Pearson upper bound at ``1 - alpha`` to
    reach ``target``: ``ceil(log(alpha) / log(1 - target))`` (299 for 1% at 95%; 0 target: never).

    >>> needed(0.01), needed(0.05)
    (299, 59)
    """
    import math

    return math.ceil(math.log(alpha) / math.log1p(-target)) if 0 < target < 1 else 2 ** 31


def sampled(camera: str, frame: int, share: float) -> bool:
    """Whether a frame goes to the reference model for the live accuracy estimate (stable across replays)."""
    h = hashlib.blake2b(f"{camera}/{frame}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0 ** 64 < share


@dataclass
class Camera:
    """One camera's life-cycle state (module docstring)."""

    phase: str = "bootstrap"
    seen: int = 0
    """Frames of this camera so far (the swap is at a fixed count of them)."""
    thumbs: list[np.ndarray] = field(default_factory=list)
    grays: list[np.ndarray] = field(default_factory=list)
    diffs: list[float] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    prev_gray: np.ndarray | None = None
    anchor_gray: np.ndarray | None = None
    """The difference detector's thumbnail of the last frame a model decided (the anchor)."""
    last_label: bool = False
    last_conf: float = 1.0
    swap_at: int = -1
    version: int | None = None
    plan: Plan | None = None
    samples: deque[bool] = field(default_factory=lambda: deque(maxlen=200))
    jitter: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=JITTER_KEPT))
    """Frame-to-frame (score, pixels) changes of the reference model's boxes (:mod:`.fragility`)."""
    last_boxes: list[Detection] = field(default_factory=list)
    last_boxes_at: int = -1
    """The reference model's boxes on this camera's ``last_boxes_at``-th frame (its last call)."""
    margin: tuple[float, float] | None = None
    """(score, pixels) a typical jitter moves a box: fixed from the bootstrap's jitter when training starts."""
    fragile: bool = False
    """Whether the reference model's last answer was one a typical jitter could flip."""
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    ref_ms: list[float] = field(default_factory=list)
    diff_ms: list[float] = field(default_factory=list)
    spec: OnnxSpecialized | None = None
    thread: threading.Thread | None = None
    fitted: FittedCascade | None = None
    error: BaseException | None = None
    train_costs: tuple[float, float] = (0.0, 1.0)
    """Difference detector and reference ms per frame when training started (kept, so a retrain after a
    crash weighs the stages as the first one did)."""
    live: dict[str, list[int]] = field(default_factory=lambda: {k: [0, 0] for k in LIVE_KEYS})
    """Since the swap, from the sampled checks: ``fn`` = [true frames checked, of them labelled false],
    ``fp`` = [false frames checked, labelled true], and per deciding stage [checks, disagreements]."""
    boost_until: int = -1
    """Up to this frame of the camera (``seen``), checks are sampled at ``boost_sample``: after a swap."""
    alert_until: int = -1
    """Up to this frame of the camera (``seen``), checks are sampled at ``alert_sample``: after a disagreement."""
    alarms: int = 0
    last_alarm: str | None = None
    run: int = 0
    """Frames in a row the difference detector has repeated a label (a model decides at the plan's ``max_run``)."""
    proven: bool = False
    """The choosing frames and the live checks since the swap bound both error rates within the targets
    (:meth:`Plan.bounds <dawnstream.operators.video.optimizer.Plan.bounds>`); until then checks are boosted."""

    def checked(self) -> tuple[int, int, int, int]:
        """The live checks since the swap: (true frames checked, of them labelled false, false frames checked,
        of them labelled true)."""
        return (self.live["fn"][0], self.live["fn"][1], self.live["fp"][0], self.live["fp"][1])


class Cascade(Operator):
    """Labels every frame of every camera with the query's answer, the reference model called as little as
    the FN/FP targets allow (module docstring).

    Args:
        detector: the reference model, ``{kind: ssdlite | hog | onnx, ...}``.
        query: ``{region: [x0, y0, x1, y1], point: foot | center, min_count: 1}`` (default: any box).
        targets: ``{fn: 0.01, fp: 0.01}``: the largest false-negative and false-positive rates allowed,
            against the reference model; the only numbers a user needs to set.
        count: output the reference's box count where it ran.
        bootstrap: reference-labelled frames to collect before training (at least).
        min_per_class: frames of each class needed in both parts of the temporal split.
        block: frames per block of the temporal split.
        swap_after: frames between the start of training and the swap.
        sample: share of cascade frames also sent to the reference model (live agreement).
        window, min_agreement: retrain when the agreement over the last ``window`` samples (at least 20)
            falls below ``min_agreement``.
        difference: ``{size: [64, 48], blocks: [1, 1], roi: [x0, y0, x1, y1]}`` of the lag-1 difference
            detector; ``roi`` (pixels of the full-size frame, like ``query.region``) restricts it to the
            part of the frame the query looks at, so people moving elsewhere do not count as change
            (default: the query's region with the margin of :func:`query_box`; the whole frame without
            a region).
        grid: the specialized-model candidates, ``[{convs, filters, dense}, ...]`` (default: 8).
        epochs: training epochs of the grid.
        max_bootstrap: the most frames kept while waiting for both classes (the oldest block goes first):
            bounds the state of a camera whose query stays false for hours.
        model: registry name of the specialized models (default ``specialized.<stage name>.<camera>``).
        confirm_changes: a specialized answer that would change the label (the previous frame's) goes to
            the reference model instead: a specialized model errs most where events start and end, and
            there are few of those (on vtest, 16 positive runs in 795 frames). The optimizer's thresholds
            meet the targets without crediting it (:func:`~.optimizer.choose`).
        specialized_input: what the specialized model sees: ``region`` (default; the query's region with a
            margin, :func:`query_box`, so a region a few pixels wide in a whole-frame thumbnail spans the
            input) or ``frame`` (a thumbnail of the whole frame; also what a query without a region gets).
        boost_sample, boost_frames: for ``boost_frames`` frames after each swap, and while the plan is on
            probation, the checks are sampled at ``boost_sample`` (when larger) instead of ``sample``: a new
            model is watched closely until the live test has evidence (module docstring).
        alert_sample: for ``boost_frames`` frames after a disagreement, checks are sampled at this share
            (when larger than ``boost_sample``, the default): one error is followed up more closely. Off
            by default: at 0.5 on vtest's lawn it changed which frames were checked, and the checks then
            missed the errors the 20% checks had caught (one run; see the video tutorial).
        registry: registry root (default ``$DAWNSTREAM_REGISTRY``).

    Raises:
        ConfigError: a bad option, naming the key.
    """

    kind = "cascade"
    stateful = True
    keyed_state = True
    """A camera's bootstrap frames (thumbnails and difference images) go to the keyed store, in records of
    at most :data:`FRAMES_RECORD_BYTES`, rewritten only when they changed: ~1,400 noisy frames of one camera
    once made the snapshot blob pass the changelog's 16 MiB message limit and stopped the job for good."""

    def __init__(self, detector: dict[str, Any], query: dict[str, Any] | None = None,
                 targets: dict[str, float] | None = None, count: bool = False, bootstrap: int = 300,
                 min_per_class: int = 20, block: int = 30, swap_after: int = 50, sample: float = 0.05,
                 window: int = 100, min_agreement: float = 0.9, difference: dict[str, Any] | None = None,
                 grid: list[dict[str, int]] | None = None, epochs: int = 15, max_bootstrap: int = 1000,
                 model: str | None = None, confirm_changes: bool = True, boost_sample: float = 0.2,
                 boost_frames: int = 100, alert_sample: float = 0.0, specialized_input: str = "region",
                 registry: str | None = None,
                 name: str | None = None,
                 _path: str = "stages") -> None:
        super().__init__(name)
        base = _path.rsplit(".", 1)[0] if "." in _path else _path
        self.detector, self.query = reference_query(detector, query, base)
        # The detector keeps boxes down to half its threshold; the query counts those at or above it, and
        # the ones in between tell a fragile answer from a sure one (.fragility).
        self.min_score = float(getattr(self.detector, "min_score", 0.0))
        if self.min_score > 0:
            self.detector.min_score = self.min_score * SCORE_FLOOR  # type: ignore[attr-defined]
        t = dict(targets or {})
        self.fn_target, self.fp_target = float(t.pop("fn", 0.01)), float(t.pop("fp", 0.01))
        if t or not (0 <= self.fn_target < 1 and 0 <= self.fp_target < 1):
            raise ConfigError(f"{base}.targets", f"expected {{fn: rate, fp: rate}} in [0, 1), got {targets!r}")
        for key, v, lo in (("bootstrap", bootstrap, 3), ("min_per_class", min_per_class, 1), ("block", block, 1),
                           ("swap_after", swap_after, 0), ("window", window, 1), ("epochs", epochs, 1)):
            if int(v) < lo:
                raise ConfigError(f"{base}.{key}", f"expected an integer >= {lo}, got {v!r}")
        if not (0 <= float(sample) <= 1 and 0 <= float(min_agreement) <= 1):
            raise ConfigError(f"{base}.sample", "sample and min_agreement are shares in [0, 1]")
        if not 0 <= float(boost_sample) <= 1:
            raise ConfigError(f"{base}.boost_sample", f"expected a share in [0, 1], got {boost_sample!r}")
        if not 0 <= float(alert_sample) <= 1:
            raise ConfigError(f"{base}.alert_sample", f"expected a share in [0, 1], got {alert_sample!r}")
        if int(boost_frames) < 0:
            raise ConfigError(f"{base}.boost_frames", f"expected an integer >= 0, got {boost_frames!r}")
        self.boost_sample, self.boost_frames = max(float(boost_sample), float(sample)), int(boost_frames)
        self.alert_sample = max(float(alert_sample), self.boost_sample)
        if specialized_input not in ("region", "frame"):
            raise ConfigError(f"{base}.specialized_input", f"expected region or frame, got {specialized_input!r}")
        self.spec_box = (query_box(self.query.region, self.query.point)
                         if specialized_input == "region" and self.query.region is not None else None)
        dd = dict(difference or {})
        self.diff_size = tuple(int(v) for v in dd.pop("size", (64, 48)))
        self.diff_blocks = tuple(int(v) for v in dd.pop("blocks", (1, 1)))
        roi = dd.pop("roi", None)
        if dd or len(self.diff_size) != 2 or len(self.diff_blocks) != 2:
            raise ConfigError(f"{base}.difference",
                              "expected {size: [w, h], blocks: [rows, cols], roi: [x0, y0, x1, y1]}, "
                              f"got {difference!r}")
        # Without a roi, change counts where the query looks: its region with the specialized model's margin
        # (a person walking elsewhere is not a reason to decide again; one walking into the region is).
        self.diff_roi = (pixel_box(roi, f"{base}.difference.roi") if roi is not None else
                         query_box(self.query.region, self.query.point) if self.query.region is not None else None)
        try:
            self.grid = [SpecConfig(**g) for g in grid] if grid else None
        except TypeError as e:
            raise ConfigError(f"{base}.grid", f"expected [{{convs, filters, dense}}, ...]: {e}") from None
        self.count, self.bootstrap, self.min_per_class = bool(count), int(bootstrap), int(min_per_class)
        self.block, self.swap_after, self.sample = int(block), int(swap_after), float(sample)
        self.window, self.min_agreement, self.epochs = int(window), float(min_agreement), int(epochs)
        self.max_bootstrap, self.confirm_changes = int(max_bootstrap), bool(confirm_changes)
        if self.max_bootstrap < self.bootstrap + self.block:
            raise ConfigError(f"{base}.max_bootstrap",
                              f"expected at least bootstrap + block = {self.bootstrap + self.block}")
        self.model_name = model
        self.registry = Registry(registry) if registry else Registry()
        self.cameras: dict[str, Camera] = {}
        self._written: dict[str, tuple[int, int]] = {}  # camera -> (crc32, records) of its frames in the store
        self._pending_frames: dict[str, int] | None = None
        self._decoded: dict[tuple[str, int, int], np.ndarray] = {}  # bad_rows' decodes, for process

    def required_columns(self) -> set[str]:
        return {"camera_id", "frame_index", "image"}

    def produced_columns(self) -> set[str]:
        return set(OUT_SCHEMA.names)

    def passes_through(self) -> bool:
        return False

    def _model(self, camera: str) -> str:
        clean = "".join(c if c.isalnum() or c in "_.-" else "_" for c in camera)
        return self.model_name.replace("{camera}", clean) if self.model_name else f"specialized.{self.name}.{clean}"

    # -- per frame ------------------------------------------------------------------------------
    def _reference(self, cam: Camera, raw: bytes) -> tuple[bool, int, float]:
        frame = decode(raw)  # full size only here: the cheap stages read a quarter-size decode
        t0 = time.perf_counter()
        boxes = self.detector.detect(frame)
        ms = (time.perf_counter() - t0) * 1000.0
        cam.ref_ms.append(ms)
        del cam.ref_ms[:-200]
        label, n = self._answer(cam, boxes, frame.shape[:2])
        return label, n, ms

    def _answer(self, cam: Camera, boxes: list[Detection], shape: tuple[int, int]) -> tuple[bool, int]:
        """The query's answer on the reference model's ``boxes`` (of a ``shape`` = (height, width) frame);
        keeps their jitter against the camera's previous frame and whether the answer is fragile."""
        sure = [b for b in boxes if b.score >= self.min_score]
        n = self.query.count(sure)
        if cam.phase == "bootstrap" and cam.last_boxes_at == cam.seen - 1:
            cam.jitter.extend(jitter(cam.last_boxes, boxes, self.query, self.min_score))
        cam.last_boxes, cam.last_boxes_at = boxes, cam.seen
        cam.fragile = fragile(boxes, self.query, self.min_score, cam.margin, shape)
        return n >= self.query.min_count, n

    def _frame(self, camera: str, idx: int, raw: bytes) -> tuple[bool, int | None, str, float, float, bool]:
        """(label, count, decided_by, confidence, reference ms, sampled) of one frame; moves the camera's
        state on."""
        cam = self.cameras.get(camera)
        if cam is None:
            cam = self.cameras[camera] = Camera(samples=deque(maxlen=self.window))
        cam.seen += 1
        t0 = time.perf_counter()
        frame = self._decoded.pop((camera, idx, zlib.crc32(raw)), None)
        if frame is None:
            frame = decode(raw, QUARTER)
        crop = frame if self.diff_roi is None else clip_crop(frame, self.diff_roi, QUARTER)
        gray = np.clip(np.rint(thumbnail(crop, self.diff_size)), 0, 255).astype(np.uint8)  # type: ignore[arg-type]
        # the cascade compares with the anchor; the bootstrap keeps the t-1 score (the optimizer's candidates)
        against = cam.anchor_gray if cam.phase == "cascade" else cam.prev_gray
        d = frame_mse(gray, against, self.diff_blocks) if against is not None else float("nan")  # type: ignore[arg-type]
        cam.prev_gray = gray
        cam.diff_ms.append((time.perf_counter() - t0) * 1000.0)
        del cam.diff_ms[:-200]
        if cam.phase == "training" and cam.seen >= cam.swap_at:
            self._swap(camera, cam)  # the previous frame went to the reference: it is the anchor, d stands
        if cam.phase != "cascade":
            label, n, ms = self._reference(cam, raw)
            cam.anchor_gray = gray
            if cam.phase == "bootstrap":
                self._keep(cam, idx, frame, gray, d, label)
                if len(cam.labels) >= self.bootstrap and ready(np.array(cam.labels), self.block, self.min_per_class):
                    self._start_training(camera, cam)
            return self._decided(cam, label, 1.0, "reference", n, ms)
        plan = cam.plan
        assert plan is not None and cam.spec is not None
        boosted = cam.seen <= cam.boost_until or not cam.proven
        share = self.alert_sample if cam.seen <= cam.alert_until else self.boost_sample if boosted else self.sample
        share = max(share, self._check_share(cam))  # the reference's own flips
        check = sampled(camera, idx, share)
        if cam.fragile:
            # The reference model's last answer sat within a typical jitter of the query's boundary (a box
            # scoring near min_score, a foot near the region's edge): on the next frame it may answer the
            # other way, which neither a repeated nor a predicted label would follow (.fragility).
            cam.anchor_gray = gray
            label, n, ms = self._reference(cam, raw)
            if check:
                self._watch(camera, cam, idx, "reference", label, label)
            return self._decided(cam, label, 1.0, "reference", n, ms)
        if not np.isnan(d) and d < plan.delta and not (plan.max_run and cam.run >= plan.max_run):
            label, conf, by = cam.last_label, cam.last_conf, "difference"
        else:
            cam.anchor_gray = gray
            p = float(cam.spec.predict(self._spec_thumb(frame)[None].astype(np.float32) / 255.0)[0])
            keep = not self.confirm_changes  # else a change of label needs the reference model
            if p < plan.c_low and (keep or not cam.last_label):
                label, conf, by = False, 1.0 - p, "specialized"
            elif p > plan.c_high and (keep or cam.last_label):
                label, conf, by = True, p, "specialized"
            else:
                label, n, ms = self._reference(cam, raw)
                if check:
                    self._watch(camera, cam, idx, "reference", label, label)
                return self._decided(cam, label, 1.0, "reference", n, ms)
        if check:
            # The reference answer is the frame's label and the one later frames copy (a stale label the
            # difference detector kept repeating ends here); the cheaper answer is evidence for the estimate.
            truth, n, ms = self._reference(cam, raw)
            cam.samples.append(truth == label)
            cam.anchor_gray = gray
            if not self._watch(camera, cam, idx, by, label, truth) and len(cam.samples) >= min(20, self.window) \
                    and np.mean(cam.samples) < self.min_agreement:
                self._alarm(camera, cam, idx, f"agreement {np.mean(cam.samples):.3f} < {self.min_agreement} over "
                                              f"the last {len(cam.samples)} checks")
            return self._decided(cam, truth, 1.0, "reference", n, ms, sampled=True)
        return self._decided(cam, label, conf, by, None, float("nan"))

    def _watch(self, camera: str, cam: Camera, idx: int, by: str, label: bool, truth: bool) -> bool:
        """Count a sampled check (the cascade's ``label``, decided by ``by``, against the reference's
        ``truth``) and run the live test; True when it fired. Frames the reference decided count as
        checks without error, so the rates estimate the cascade's over all frames, as the targets are."""
        live = cam.live
        live["fn" if truth else "fp"][0] += 1
        live[by][0] += 1
        if label != truth:
            live["fn" if truth else "fp"][1] += 1
            live[by][1] += 1
            cam.alert_until = cam.seen + self.boost_frames  # one error: look closer
        for key, target in (("fn", self.fn_target), ("fp", self.fp_target)):
            n, k = live[key]
            low = lower_bound(k, n, ALPHA)
            if low > target:
                self._alarm(camera, cam, idx, f"live {key.upper()} rate {k}/{n}: at least {low:.3f} (95% sure) "
                                              f"> target {target}")
                return True
        if not cam.proven and cam.plan is not None:
            fn_bound, fp_bound = cam.plan.bounds(ALPHA, cam.checked())
            if fn_bound <= self.fn_target and fp_bound <= self.fp_target:
                cam.proven = True
                event(log, "cascade.proven", camera=camera, frame=idx, fn_bound=round(fn_bound, 4),
                      fp_bound=round(fp_bound, 4), live_fn=live["fn"], live_fp=live["fp"])
        return False

    def _alarm(self, camera: str, cam: Camera, idx: int, why: str) -> None:
        """The plan missed its targets live: every frame goes to the reference model again at once (the
        bootstrap), whose labels retrain the model; logged, counted and exported (``alarms``)."""
        cam.alarms += 1
        cam.last_alarm = f"frame {idx}: {why}"
        event(log, "cascade.alarm", camera=camera, frame=idx, reason=why, version=cam.version,
              by_stage={s: cam.live[s] for s in STAGES})
        self._reset(cam)

    def _check_share(self, cam: Camera) -> float:
        """The least share of the cheaper stages' frames the reference checks on this camera (its flips)."""
        return cam.plan.check_share(self.fn_target, self.fp_target) if cam.plan is not None else 0.0

    def _spec_thumb(self, frame: np.ndarray) -> np.ndarray:
        """The specialized model's input: the query's part of the frame (:func:`query_box`), or the whole frame."""
        return _thumb(frame if self.spec_box is None else clip_crop(frame, self.spec_box, QUARTER))

    def _keep(self, cam: Camera, idx: int, frame: np.ndarray, gray: np.ndarray, d: float, label: bool) -> None:
        """A bootstrap frame kept for training; past ``max_bootstrap`` the oldest block goes (the split
        stays aligned)."""
        cam.thumbs.append(self._spec_thumb(frame))
        cam.grays.append(gray)
        cam.diffs.append(d)
        cam.labels.append(label)
        cam.frames.append(idx)
        if len(cam.labels) > self.max_bootstrap:
            for buf in (cam.thumbs, cam.grays, cam.diffs, cam.labels, cam.frames):
                del buf[:self.block]

    def _decided(self, cam: Camera, label: bool, conf: float, by: str, n: int | None,
                 ms: float, sampled: bool = False) -> tuple[bool, int | None, str, float, float, bool]:
        cam.last_label, cam.last_conf = bool(label), float(conf)
        cam.run = cam.run + 1 if by == "difference" else 0
        cam.counts[by] += 1
        return bool(label), (n if self.count else None), by, float(conf), ms, sampled

    def _reset(self, cam: Camera) -> None:
        cam.phase, cam.thumbs, cam.grays, cam.diffs, cam.labels, cam.frames = "bootstrap", [], [], [], [], []
        cam.samples.clear()

    # -- training and the swap ------------------------------------------------------------------
    def _start_training(self, camera: str, cam: Camera, swap_at: int | None = None) -> None:
        """Train in the background; the model takes over at the camera's ``swap_at``-th frame (by default
        ``swap_after`` frames from now; a restore passes the one it had)."""
        cam.phase, cam.fitted, cam.error = "training", None, None
        cam.margin = margins(list(cam.jitter))
        cam.swap_at = cam.seen + 1 + self.swap_after if swap_at is None else swap_at
        thumbs, grays = np.stack(cam.thumbs), np.stack(cam.grays)
        diffs, labels = np.array(cam.diffs), np.array(cam.labels)
        frames = (cam.frames[0], cam.frames[-1])
        if cam.ref_ms:
            cam.train_costs = (float(np.median(cam.diff_ms)) if cam.diff_ms else 0.0, float(np.median(cam.ref_ms)))
        diff_ms, ref_ms = cam.train_costs
        event(log, "cascade.training", camera=camera, frames=len(labels), positives=int(labels.sum()),
              swap_at=cam.swap_at)

        def work() -> None:
            try:
                with TRAINING:
                    cam.fitted = self._fit_or_reuse(camera, frames, thumbs, grays, diffs, labels, diff_ms, ref_ms)
            except BaseException as e:  # noqa: BLE001 - handed to the stream thread at the swap
                cam.error = e

        cam.thread = threading.Thread(target=work, name=f"cascade-train-{camera}", daemon=True)
        cam.thread.start()

    def _fit_or_reuse(self, camera: str, frames: tuple[int, int], thumbs: np.ndarray, grays: np.ndarray,
                      diffs: np.ndarray, labels: np.ndarray, diff_ms: float, ref_ms: float) -> FittedCascade:
        name = self._model(camera)
        key = {"camera": camera, "frames": list(frames), "targets": [self.fn_target, self.fp_target],
               "epochs": self.epochs, "block": self.block, "confirm_changes": self.confirm_changes,
               "input": list(self.spec_box) if self.spec_box is not None else "frame"}
        for v in reversed(self.registry.versions(name) if name in self.registry.names() else []):
            if v.training_data == key:  # trained on these very frames before a crash: the same model
                fitted = FittedCascade(v.read_bytes(), SpecConfig(**v.params["config"]), Plan(**v.params["plan"]),
                                       tuple(v.params["costs_ms"]), v.metrics)
                fitted.report["version"] = v.version
                return fitted
        fitted = fit_cascade(thumbs, diffs, labels, grays=grays, diff_blocks=self.diff_blocks,  # type: ignore[arg-type]
                             block=self.block, diff_ms=diff_ms, reference_ms=ref_ms,
                             fn_target=self.fn_target, fp_target=self.fp_target, configs=self.grid,
                             epochs=self.epochs, confirm=self.confirm_changes)
        plan = fitted.plan
        mv = self.registry.register(
            name, fitted.onnx, "onnx", training_data=key,
            metrics={"reference_share": plan.reference_share, "fn_rate": plan.fn_rate, "fp_rate": plan.fp_rate,
                     **fitted.report},
            params={"config": {"convs": fitted.config.convs, "filters": fitted.config.filters,
                               "dense": fitted.config.dense},
                    "plan": plan.__dict__, "costs_ms": list(fitted.costs_ms)})
        self.registry.promote(name, mv.version)
        fitted.report["version"] = mv.version
        return fitted

    def _swap(self, camera: str, cam: Camera) -> None:
        if cam.thread is not None:
            cam.thread.join()
        cam.thread = None
        if cam.error is not None or cam.fitted is None:
            event(log, "cascade.training_failed", camera=camera, error=repr(cam.error))
            self._reset(cam)  # keep labelling with the reference; collect again
            return
        f = cam.fitted
        cam.spec, cam.plan, cam.version = OnnxSpecialized(f.onnx), f.plan, int(f.report["version"])
        cam.phase, cam.thumbs, cam.grays, cam.diffs, cam.labels, cam.frames = "cascade", [], [], [], [], []
        cam.live = {k: [0, 0] for k in LIVE_KEYS}
        cam.boost_until, cam.alert_until, cam.run = cam.seen + self.boost_frames, -1, 0
        fn_bound, fp_bound = f.plan.bounds(ALPHA)
        cam.proven = fn_bound <= self.fn_target and fp_bound <= self.fp_target
        event(log, "cascade.swap", camera=camera, version=cam.version, model=f.config.name, delta=f.plan.delta,
              c_low=f.plan.c_low, c_high=f.plan.c_high, max_run=f.plan.max_run,
              reference_share=f.plan.reference_share, fn_bound=round(fn_bound, 4), fp_bound=round(fp_bound, 4))
        flips = self._check_share(cam)
        if flips > 0:  # no thresholds follow a one-frame flip of the reference: only its own call on the frame
            event(log, "cascade.flicker", camera=camera, version=cam.version, check_share=flips,
                  reason=f"the reference model's answer flips for a single frame on {f.plan.fn_floor:.1%} of the "
                         f"true and {f.plan.fp_floor:.1%} of the false bootstrap frames; a cheaper stage answers "
                         f"such a frame as its neighbours, so {flips:.0%} of its frames are checked by the "
                         f"reference model (whose answer is the label) to keep FN/FP within {self.fn_target}/"
                         f"{self.fp_target}; targets of at least fn {f.plan.fn_floor:.3f}, fp {f.plan.fp_floor:.3f} "
                         "need no such checks")
        if not cam.proven:  # say so; the boosted checks (reference labels) run until the evidence is there
            event(log, "cascade.probation", camera=camera, version=cam.version,
                  reason=f"the {f.plan.positives} true and {f.plan.negatives} false choosing frames bound FN at "
                         f"{fn_bound:.3f} and FP at {fp_bound:.3f} (95%), not within the targets "
                         f"{self.fn_target}/{self.fp_target}: checks stay at {self.boost_sample:.0%} until "
                         f"about {needed(self.fn_target)} true and {needed(self.fp_target)} false frames are "
                         "checked without error")

    # -- the stage ------------------------------------------------------------------------------
    def bad_rows(self, batch: pa.RecordBatch) -> dict[int, str]:
        """Frames without an image, or whose image does not decode (refused before any camera's state moves;
        :meth:`process` would have raised midway, after the frames before it had moved their cameras). The
        quarter-size decodes are kept for :meth:`process`, so a frame is decoded once."""
        self._decoded.clear()
        if batch.num_rows == 0 or not {"image", "camera_id", "frame_index"} <= set(batch.schema.names):
            return {}
        images = batch.column("image")
        if not (pa.types.is_binary(images.type) or pa.types.is_large_binary(images.type)):
            return {}  # process() says what the column should be
        cams, idxs = batch.column("camera_id").to_pylist(), batch.column("frame_index").to_pylist()
        out: dict[int, str] = {}
        for i in range(batch.num_rows):
            raw = images[i].as_py()
            if raw is None:
                out[i] = "the frame has no image"
                continue
            try:
                self._decoded[(str(cams[i]), int(idxs[i]), zlib.crc32(raw))] = decode(raw, QUARTER)
            except Exception as e:  # noqa: BLE001 - OpenCV raises cv2.error (not a ValueError) on some inputs
                out[i] = f"frame {idxs[i]} of camera {cams[i]!r}: {e}"
        return out

    def process(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        self._load_frames()
        images = batch.column("image")
        if not (pa.types.is_binary(images.type) or pa.types.is_large_binary(images.type)):
            raise TypeError(f"column 'image' is {images.type}: expected JPEG/PNG bytes (the frames codec)")
        cams = batch.column("camera_id").to_pylist()
        idxs = batch.column("frame_index").to_pylist()
        ts = (batch.column("timestamp_ms").to_pylist() if "timestamp_ms" in batch.schema.names
              else [None] * batch.num_rows)
        import cv2

        rows: dict[str, list[Any]] = {n: [] for n in OUT_SCHEMA.names}
        for i in range(batch.num_rows):
            raw = images[i].as_py()
            if raw is None:
                raise ValueError(f"row {i} of camera {cams[i]!r} has no image")
            try:
                label, n, by, conf, ms, checked = self._frame(str(cams[i]), int(idxs[i]), raw)
            except cv2.error as e:  # OpenCV on a frame's content: a data error (dead letters), not a bug
                raise ValueError(f"frame {idxs[i]} of camera {cams[i]!r}: OpenCV: {str(e).strip()[-200:]}") from None
            cam = self.cameras[str(cams[i])]
            for k, v in (("camera_id", str(cams[i])), ("frame_index", int(idxs[i])), ("timestamp_ms", ts[i]),
                         ("label", label), ("count", n), ("decided_by", by), ("confidence", conf),
                         ("phase", cam.phase), ("model_version", cam.version),
                         ("reference_ms", None if np.isnan(ms) else ms), ("sampled", checked)):
                rows[k].append(v)
        self._decoded.clear()
        return [pa.RecordBatch.from_pydict(rows, schema=OUT_SCHEMA)]

    def gauges(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for cam in self.cameras.values():
            for s in STAGES:
                out[f"frames_{s}"] = out.get(f"frames_{s}", 0.0) + cam.counts[s]
        agreements = [a for cam in self.cameras.values() for a in cam.samples]
        out["live_samples"] = float(len(agreements))  # how much the live agreement rests on
        if agreements:
            out["live_agreement"] = float(np.mean(agreements))
        total = sum(out.get(f"frames_{s}", 0.0) for s in STAGES)
        if total:
            out["reference_share"] = out.get("frames_reference", 0.0) / total
        out["cameras_in_cascade"] = float(sum(c.phase == "cascade" for c in self.cameras.values()))
        out["alarms"] = float(sum(c.alarms for c in self.cameras.values()))
        watched = [c for c in self.cameras.values() if c.phase == "cascade" and c.plan is not None]
        out["cameras_proven"] = float(sum(c.proven for c in watched))
        if watched:  # the worst camera's: what the stage can promise now (choosing frames + live checks)
            bounds = [c.plan.bounds(ALPHA, c.checked()) for c in watched]  # type: ignore[union-attr]
            out["fn_bound"], out["fp_bound"] = max(b[0] for b in bounds), max(b[1] for b in bounds)
            out["check_share"] = max(self._check_share(c) for c in watched)
        for key in LIVE_KEYS:  # the live test's counts since each camera's swap, summed over cameras
            n = sum(c.live[key][0] for c in self.cameras.values())
            k = sum(c.live[key][1] for c in self.cameras.values())
            out[f"live_checks_{key}"] = float(n)
            if n:
                out[live_gauge(key)] = k / n
        return out

    def panel(self) -> dict[str, Any]:
        """Per camera :meth:`summary`, with the live gauges (frames per stage, reference share, live FN/FP)."""
        return {"kind": "cascade", "cameras": self.summary(), "gauges": self.gauges()}

    def summary(self) -> dict[str, Any]:
        """Per camera: phase, model version, plan, frames per stage, live agreement, whether the plan left
        probation, its bounds, the least check share of the reference's flips."""
        return {name: {"phase": c.phase, "model_version": c.version, "frames": dict(c.counts),
                       "plan": c.plan.__dict__ if c.plan else None,
                       "live_agreement": float(np.mean(c.samples)) if c.samples else None,
                       "live": {k: list(v) for k, v in c.live.items()}, "alarms": c.alarms,
                       "last_alarm": c.last_alarm, "proven": c.proven, "check_share": self._check_share(c),
                       "bounds": list(c.plan.bounds(ALPHA, c.checked())) if c.plan else None,
                       "reference_ms": float(np.median(c.ref_ms)) if c.ref_ms else None}
                for name, c in self.cameras.items()}

    # -- state ----------------------------------------------------------------------------------
    def _frames_to_store(self, arrays: dict[str, np.ndarray]) -> dict[str, int]:
        """Write each camera's arrays as compressed npz records of at most :data:`FRAMES_RECORD_BYTES` (only
        when they changed since the last checkpoint); returns the records per camera, for the blob."""
        chunks: dict[str, int] = {}
        for name in self.cameras:
            mine = {k: v for k, v in arrays.items() if k.split("/", 1)[1] == name}
            data = zlib.compress(to_npz(mine), 1) if mine else b""
            parts = [data[i:i + FRAMES_RECORD_BYTES] for i in range(0, len(data), FRAMES_RECORD_BYTES)]
            chunks[name] = len(parts)
            digest = zlib.crc32(data)
            if self._written.get(name) == (digest, len(parts)):
                continue
            old = self._written.get(name, (0, 0))[1]
            for i, part in enumerate(parts):
                self.store[f"frames/{name}/{i}"] = part
            for i in range(len(parts), old):
                self.store.pop(f"frames/{name}/{i}", None)
            self._written[name] = (digest, len(parts))
        return chunks

    def _load_frames(self) -> None:
        """After a restore: the cameras' arrays are the store's records (read back by then)."""
        pending, self._pending_frames = self._pending_frames, None
        if pending is None:
            return
        for name, n in pending.items():
            data = b"".join(self.store[f"frames/{name}/{i}"] for i in range(n))
            arrays = from_npz(zlib.decompress(data)) if data else {}
            self._written[name] = (zlib.crc32(data), n)
            self._arrays_to_camera(name, self.cameras[name], arrays)

    def _arrays_to_camera(self, name: str, c: Camera, arrays: dict[str, np.ndarray]) -> None:
        c.thumbs = list(arrays[f"t/{name}"]) if f"t/{name}" in arrays else []
        c.grays = list(arrays[f"b/{name}"]) if f"b/{name}" in arrays else []
        c.prev_gray, c.anchor_gray = arrays.get(f"g/{name}"), arrays.get(f"a/{name}")
        if c.phase == "training":  # the thread died with the process: train again (or find its model)
            self._start_training(name, c, swap_at=c.swap_at)
        elif c.phase == "cascade" and c.version is not None:
            c.spec = OnnxSpecialized(self.registry.get(self._model(name), c.version).read_bytes())

    def _state(self) -> Any:
        self._load_frames()
        meta, arrays = {}, {}
        for name, c in self.cameras.items():
            meta[name] = {"phase": c.phase, "seen": c.seen, "diffs": c.diffs, "labels": c.labels, "frames": c.frames,
                          "last_label": c.last_label, "last_conf": c.last_conf, "swap_at": c.swap_at,
                          "version": c.version, "plan": c.plan.__dict__ if c.plan else None,
                          "samples": list(c.samples), "counts": c.counts, "jitter": list(c.jitter),
                          "last_boxes": [[b.x, b.y, b.w, b.h, b.score] for b in c.last_boxes],
                          "last_boxes_at": c.last_boxes_at, "margin": c.margin, "fragile": c.fragile,
                          "train_costs": list(c.train_costs), "live": c.live, "boost_until": c.boost_until,
                          "alert_until": c.alert_until,
                          "alarms": c.alarms, "last_alarm": c.last_alarm, "run": c.run, "proven": c.proven}
            if c.thumbs:
                arrays[f"t/{name}"] = np.stack(c.thumbs)
                arrays[f"b/{name}"] = np.stack(c.grays)
            if c.prev_gray is not None:
                arrays[f"g/{name}"] = c.prev_gray
            if c.anchor_gray is not None:
                arrays[f"a/{name}"] = c.anchor_gray
        if self.has_keyed_store():
            return {"meta": meta, "frames": self._frames_to_store(arrays)}
        return {"meta": meta, "npz": base64.b64encode(zlib.compress(to_npz(arrays), 1)).decode() if arrays else ""}

    def _load_state(self, state: Any) -> None:
        if not state:
            return
        npz = state.get("npz")
        arrays = from_npz(zlib.decompress(base64.b64decode(npz))) if npz else {}
        self._written = {}
        self._pending_frames = state.get("frames")  # in the store: read at first use, after its records
        self.cameras = {}
        for name, m in state["meta"].items():
            c = Camera(phase=m["phase"], seen=m["seen"], diffs=[float("nan") if v is None else v for v in m["diffs"]],
                       labels=m["labels"], frames=m["frames"], last_label=m["last_label"], last_conf=m["last_conf"],
                       swap_at=m["swap_at"], version=m["version"], plan=Plan(**m["plan"]) if m["plan"] else None,
                       samples=deque(m["samples"], self.window), counts=m["counts"],
                       jitter=deque((tuple(v) for v in m.get("jitter", [])), JITTER_KEPT),
                       last_boxes=[Detection(*v) for v in m.get("last_boxes", [])],
                       last_boxes_at=m.get("last_boxes_at", -1), fragile=m.get("fragile", False),
                       margin=tuple(m["margin"]) if m.get("margin") else None,
                       train_costs=tuple(m["train_costs"]),
                       live={k: list(v) for k, v in m.get("live", {}).items()} or {k: [0, 0] for k in LIVE_KEYS},
                       boost_until=m.get("boost_until", -1), alert_until=m.get("alert_until", -1),
                       alarms=m.get("alarms", 0),
                       last_alarm=m.get("last_alarm"), run=m.get("run", 0), proven=m.get("proven", False))
            self.cameras[name] = c
            if self._pending_frames is None:
                self._arrays_to_camera(name, c, arrays)


FRAMES_RECORD_BYTES = 8 << 20
"""Largest keyed-store record of a camera's frames (the changelog's message limit is 16 MiB)."""

QUARTER = 4
"""The cheap stages read frames decoded at 1/4 scale (libjpeg's DCT scaling: ~3x faster than full size)."""


def query_box(region: tuple[float, float, float, float], point: str) -> tuple[int, int, int, int]:
    """The part of the frame (full-size pixels) the specialized model sees for a query on ``region``: the
    region with a margin of half its size on each side, and for ``point: foot`` the height of a standing
    person above it (twice the region's height, at least 160 px), since the boxes whose feet are in the
    region rise above it. Clipped to each frame when cropped (:func:`clip_crop`)."""
    x0, y0, x1, y1 = region
    w, h = x1 - x0, y1 - y0
    above = max(2 * h, 160.0) if point == "foot" else h / 2
    return (max(int(x0 - w / 2), 0), max(int(y0 - above), 0), int(np.ceil(x1 + w / 2)), int(np.ceil(y1 + h / 2)))


def _thumb(frame: np.ndarray) -> np.ndarray:
    """``(3, 50, 50)`` uint8 RGB thumbnail (the specialized model's input, kept small in state)."""
    import cv2

    from dawnstream.models.specialized import THUMB

    small = cv2.resize(frame, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small[:, :, ::-1].transpose(2, 0, 1))

