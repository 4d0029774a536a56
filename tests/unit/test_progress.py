"""Long commands say how far they got: plain lines when not on a terminal, a rich bar on one."""

from __future__ import annotations

import io

from dawnstream.progress import Progress


def test_plain_lines_off_a_terminal_and_a_last_line_at_the_end() -> None:
    out = io.StringIO()
    with Progress("retrain: reading t", unit="ratings", file=out, every_s=0) as p:
        p.update(1500)
        p.advance(500)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("retrain: reading t: 2,000 ratings in ")
    assert "\x1b" not in out.getvalue()  # no control characters in a log


def test_a_bar_on_a_terminal_and_no_line_when_the_command_fails() -> None:
    out = io.StringIO()
    with Progress("replay", total=10, unit="frames", file=out, terminal=True) as p:
        p.advance(10)
    assert "replay" in out.getvalue() and "10/10" in out.getvalue()
    quiet = io.StringIO()
    try:
        with Progress("replay", total=10, file=quiet, every_s=60):
            raise ValueError("broker gone")
    except ValueError:
        pass
    assert quiet.getvalue() == ""  # the error says what happened; a progress line would bury it
