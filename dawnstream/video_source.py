"""Video in: the ``vtest.avi`` test video, fetched once from Debian's package, and frames read from any video file.

``vtest.avi`` (OpenCV's sample: 768x576, 10 fps, 795 frames; a fixed elevated camera over a campus
walkway and lawn, 3-10 pedestrians in every frame) ships in Debian's ``opencv-doc`` package. Like the
Kafka jars, it is fetched by the project itself on first use: ``apt-get download opencv-doc`` into a
temporary folder, then only that file is extracted (``dpkg-deb --fsys-tarfile``) into the cache
(``$DAWNSTREAM_CACHE`` or ``~/.cache/dawnstream``), checked by its MD5. ``$DAWNSTREAM_VTEST`` points
at a copy instead, where apt is not available.

Frames are decoded with OpenCV (``opencv-python-headless``, imported only here and by the video
stages: the CLI and the MacroBase path never load it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dawnstream.broker import cache_root
from dawnstream.errors import DawnstreamError

VTEST_MD5 = "d401fe2028f78dd585e2ade0a0d678c0"
VTEST_IN_PACKAGE = "./usr/share/doc/opencv-doc/examples/data/vtest.avi"
VTEST_ENV = "DAWNSTREAM_VTEST"


def _md5(path: Path) -> str:
    h = hashlib.md5()  # noqa: S324 - a published checksum, not security
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def vtest() -> Path:
    """The path of ``vtest.avi``, fetched into the cache on first use (module docstring).

    Raises:
        DawnstreamError: apt-get or dpkg-deb is missing, the download fails, or the file's MD5 is not
            the published one - saying what to do.
    """
    override = os.environ.get(VTEST_ENV)
    if override:
        p = Path(override)
        if not p.is_file():
            raise DawnstreamError(f"${VTEST_ENV}={override}: no such file")
        return p
    target = cache_root() / "data" / "vtest.avi"
    if target.is_file() and _md5(target) == VTEST_MD5:
        return target
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        raise DawnstreamError(f"vtest.avi comes from Debian's opencv-doc package, and {', '.join(missing)} is not "
                              f"on this machine: copy vtest.avi (OpenCV's samples/data, md5 {VTEST_MD5}) somewhere "
                              f"and set ${VTEST_ENV} to its path")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dawnstream-vtest-") as tmp:
        r = subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, capture_output=True, text=True, timeout=600)
        if r.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
            # A fresh machine may have no package lists yet: fetch them once (as root) and retry.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
            r = subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, capture_output=True, text=True,
                               timeout=600)
        debs = sorted(Path(tmp).glob("opencv-doc_*.deb"))
        if r.returncode != 0 or not debs:
            raise DawnstreamError(f"`apt-get download opencv-doc` failed ({r.stderr.strip()[-300:]}); run "
                                  f"`apt-get update` first, or set ${VTEST_ENV} to a copy of vtest.avi")
        part = Path(tmp) / "vtest.avi"
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
                for member in tar:
                    if member.name == VTEST_IN_PACKAGE and member.isfile():
                        src = tar.extractfile(member)
                        assert src is not None
                        part.write_bytes(src.read())
                        break
            proc.stdout.read()  # let dpkg-deb finish writing
        if not part.is_file() or _md5(part) != VTEST_MD5:
            raise DawnstreamError(f"{debs[0].name} holds no vtest.avi with md5 {VTEST_MD5}; set ${VTEST_ENV} "
                                  "to a copy of it")
        shutil.move(part, target)
    return target


def read_frames(path: str | os.PathLike[str], start: int = 0, stop: int | None = None,
                step: int = 1) -> Iterator[tuple[int, int, np.ndarray]]:
    """Frames of a video file (or a camera URL OpenCV opens): ``(frame index, timestamp ms, BGR uint8
    (height, width, 3))`` for indexes ``start, start+step, ...`` below ``stop``.

    Raises:
        DawnstreamError: the file cannot be opened as a video.
    """
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DawnstreamError(f"{path}: cannot open as a video (OpenCV {cv2.__version__})")
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        i = 0
        while stop is None or i < stop:
            ok, frame = cap.read()
            if not ok:
                return
            if i >= start and (i - start) % step == 0:
                yield i, int(round(i * 1000.0 / fps)) if fps > 0 else i, frame
            i += 1
    finally:
        cap.release()


def jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    """A BGR frame as JPEG bytes.

    Raises:
        DawnstreamError: OpenCV cannot encode it.
    """
    import cv2

    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DawnstreamError(f"cannot encode a {frame.shape} frame as JPEG")
    return buf.tobytes()
