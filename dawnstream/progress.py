"""Progress of long commands (replays, retraining, the end model, benchmark ladders): a rich bar on
a terminal, and a plain line every ``every_s`` seconds otherwise, so a log or a CI run shows that
the command is alive and how far it got without a bar's control characters.

>>> import io
>>> out = io.StringIO()
>>> with Progress("replay x", total=10, unit="rows", file=out, every_s=0) as p:
...     p.advance(4)
>>> print(out.getvalue().splitlines()[-1].split(" in ")[0])
replay x: 4/10 rows (40%)
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import IO, Any


class Progress:
    """Counts ``unit`` (rows, frames, steps) towards ``total`` (None: unknown).

    Args:
        description: what is being done (``replay flights -> sensors.flights.rows.v1``).
        total: how many to expect, or None.
        unit: the counted thing's name, plural.
        file: where it goes (default stderr, so a command's JSON on stdout stays clean).
        every_s: seconds between plain lines (not on a terminal); each line is
            ``<description>: <done>/<total> <unit> (<pct>%) in <s> s, <rate> <unit>/s``.
        terminal: force the bar (True) or the plain lines (False); default: whether ``file`` is a TTY.
    """

    def __init__(self, description: str, total: int | None = None, unit: str = "rows", file: IO[str] | None = None,
                 every_s: float = 5.0, terminal: bool | None = None) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.file = file or sys.stderr
        self.every_s = every_s
        self.terminal = self.file.isatty() if terminal is None else terminal
        self.done = 0
        self._t0 = self._last = time.monotonic()
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        self._t0 = self._last = time.monotonic()
        if self.terminal:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn(self.unit), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                            console=Console(file=self.file))
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, rate="")
        return self

    def _rate(self) -> float:
        return self.done / max(time.monotonic() - self._t0, 1e-9)

    def line(self) -> str:
        """The plain progress line as of now."""
        of = f"/{self.total:,}" if self.total is not None else ""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return (f"{self.description}: {self.done:,}{of} {self.unit}{pct} in {time.monotonic() - self._t0:.1f} s, "
                f"{self._rate():,.0f} {self.unit}/s")

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more."""
        self.update(self.done + n)

    def update(self, done: int) -> None:
        """Set the count to ``done``."""
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done, rate=f"{self._rate():,.0f} {self.unit}/s")
        elif time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            print(self.line(), file=self.file, flush=True)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
        elif exc_type is None:
            print(self.line(), file=self.file, flush=True)
