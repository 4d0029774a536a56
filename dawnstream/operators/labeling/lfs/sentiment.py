"""Twelve sentiment labeling functions for short review snippets (``ROTTEN`` = 0, ``FRESH`` = 1).

Six lexicon LFs (VADER, AFINN, General Inquirer, each voting either way above a valence threshold;
three lexicons that share many words, so their errors are correlated) and six keyword / pattern LFs
written from what film critics say. All vectorized: one tokenization per batch, shared.

A topology uses them with ``lfs: [dawnstream.operators.labeling.lfs.sentiment]``; the stage takes
every :class:`~dawnstream.operators.labeling.lf.LabelingFunction` in :data:`LFS`.
"""

from __future__ import annotations

import numpy as np

from dawnstream.operators.labeling import lexicons
from dawnstream.operators.labeling.lf import (
    ABSTAIN,
    LabelingFunction,
    LFBatch,
    keyword_lf,
    labeling_function,
    lexicon_lf,
    regex_lf,
)

ROTTEN, FRESH = 0, 1
CLASSES = ["rotten", "fresh"]


PRAISE_WORDS = ["masterpiece", "delight", "delightful", "wonderful", "brilliant", "gem", "terrific", "superb",
                "funniest", "moving", "charming", "engrossing", "gripping", "captivating", "riveting", "beautifully",
                "finest", "triumph", "remarkable", "exhilarating", "poignant", "heartfelt"]
PAN_WORDS = ["dull", "boring", "tedious", "mess", "waste", "bland", "cliche", "clichés", "cliches", "lifeless",
             "pointless", "worst", "tiresome", "unfunny", "lame", "flat", "plodding", "forgettable", "mediocre",
             "disappointing", "stupid", "annoying", "incoherent", "sloppy", "ridiculous", "pretentious"]
PATTERNS = {
    "negated_praise": (r"\b(not|never|isn't|wasn't|hardly|nothing)\b[^.]{0,20}\b"
                       r"(funny|good|great|interesting|enough|much|worth|clever|original)\b", ROTTEN),
    "recommends": (r"(worth (seeing|watching|a look|the price)|must[- ]see|don't miss|"
                   r"one of the (best|year's best|finest|most))", FRESH),
    "too_much": (r"\b(too|overly|awfully) (long|slow|much|little|many|familiar|predictable|thin|silly)\b|"
                 r"\bfails? to\b|\bdoesn't (work|add up)\b", ROTTEN),
}
LEXICON_LFS = [  # name, lexicon, the class it votes, valence threshold (mean over the snippet's tokens)
    ("vader_positive", lexicons.vader, FRESH, 0.18),
    ("vader_negative", lexicons.vader, ROTTEN, 0.06),
    ("afinn_positive", lexicons.afinn, FRESH, 0.22),
    ("afinn_negative", lexicons.afinn, ROTTEN, 0.06),
    ("inquirer_positive", lexicons.general_inquirer, FRESH, 0.12),
    ("inquirer_negative", lexicons.general_inquirer, ROTTEN, 0.04),
]
EXCLAIM_NEGATIVE = r"\b(not|no|never|bad|worst|awful)\b"


def _one_way(name: str, lexicon: dict[str, float], label: int, threshold: float) -> LabelingFunction:
    lf = lexicon_lf(name, lexicon, FRESH, ROTTEN, threshold)
    inner = lf.fn

    def apply(batch: LFBatch) -> np.ndarray:
        v = inner(batch)
        return np.where(v == label, label, ABSTAIN)

    lf.fn = apply
    return lf


@labeling_function(name="exclaims_praise", vectorized=True)
def exclaims_praise(batch: LFBatch) -> np.ndarray:
    """An exclamation in a snippet with no negative cue word: enthusiasm."""
    import pyarrow.compute as pc

    bang = pc.fill_null(pc.match_substring(batch.lower, "!"), False).to_numpy(zero_copy_only=False)
    neg = pc.fill_null(pc.match_substring_regex(batch.lower, EXCLAIM_NEGATIVE), False).to_numpy(zero_copy_only=False)
    return np.where(bang & ~neg, FRESH, ABSTAIN)


LFS = [
    *(_one_way(name, lex(), label, thr) for name, lex, label, thr in LEXICON_LFS),
    keyword_lf("praise_words", PRAISE_WORDS, FRESH),
    keyword_lf("pan_words", PAN_WORDS, ROTTEN),
    *(regex_lf(name, pattern, label) for name, (pattern, label) in PATTERNS.items()),
    exclaims_praise,
]


def row_wise() -> list[LabelingFunction]:
    """The same twelve LFs written row by row in plain Python (``re``, dict lookups): the form snorkel's
    applier runs, for the benchmark's comparison. Same votes as :data:`LFS` (up to regex-engine corner cases)."""
    import re

    from dawnstream.operators.labeling.lf import TOKEN_PATTERN

    def lexicon_vote(lex: dict[str, float], label: int, threshold: float):  # noqa: ANN202
        def f(row: dict) -> int:
            tokens = [t for t in re.split(TOKEN_PATTERN, (row["text"] or "").lower()) if t]
            score = sum(lex.get(t, 0.0) for t in tokens) / max(len(tokens), 1)
            vote = FRESH if score > threshold else ROTTEN if score < -threshold else ABSTAIN
            return vote if vote == label else ABSTAIN
        return f

    def pattern_vote(pattern: str, label: int):  # noqa: ANN202
        rx = re.compile(pattern)
        return lambda row: label if rx.search((row["text"] or "").lower()) else ABSTAIN

    def words(ws: list[str]) -> str:
        return r"\b(" + "|".join(re.escape(w.lower()) for w in ws) + r")\b"

    neg = re.compile(EXCLAIM_NEGATIVE)
    out = [LabelingFunction(name, lexicon_vote(lex(), label, thr)) for name, lex, label, thr in LEXICON_LFS]
    out += [LabelingFunction("praise_words", pattern_vote(words(PRAISE_WORDS), FRESH)),
            LabelingFunction("pan_words", pattern_vote(words(PAN_WORDS), ROTTEN))]
    out += [LabelingFunction(name, pattern_vote(pattern, label)) for name, (pattern, label) in PATTERNS.items()]
    out.append(LabelingFunction("exclaims_praise", lambda row: FRESH if "!" in (row["text"] or "")
                                and not neg.search((row["text"] or "").lower()) else ABSTAIN))
    return out
