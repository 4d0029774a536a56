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
from dawnstream.operators.labeling.lf import ABSTAIN, LFBatch, keyword_lf, labeling_function, lexicon_lf, regex_lf

ROTTEN, FRESH = 0, 1
CLASSES = ["rotten", "fresh"]


def _one_way(name: str, lexicon: dict[str, float], label: int, threshold: float):
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
    neg = pc.fill_null(pc.match_substring_regex(batch.lower, r"\b(not|no|never|bad|worst|awful)\b"),
                       False).to_numpy(zero_copy_only=False)
    return np.where(bang & ~neg, FRESH, ABSTAIN)


LFS = [
    _one_way("vader_positive", lexicons.vader(), FRESH, 0.18),
    _one_way("vader_negative", lexicons.vader(), ROTTEN, 0.06),
    _one_way("afinn_positive", lexicons.afinn(), FRESH, 0.22),
    _one_way("afinn_negative", lexicons.afinn(), ROTTEN, 0.06),
    _one_way("inquirer_positive", lexicons.general_inquirer(), FRESH, 0.12),
    _one_way("inquirer_negative", lexicons.general_inquirer(), ROTTEN, 0.04),
    keyword_lf("praise_words", ["masterpiece", "delight", "delightful", "wonderful", "brilliant", "gem",
                                "terrific", "superb", "funniest", "moving", "charming", "engrossing",
                                "gripping", "captivating", "riveting", "beautifully", "finest", "triumph",
                                "remarkable", "exhilarating", "poignant", "heartfelt"], FRESH),
    keyword_lf("pan_words", ["dull", "boring", "tedious", "mess", "waste", "bland", "cliche", "clichés",
                             "cliches", "lifeless", "pointless", "worst", "tiresome", "unfunny", "lame",
                             "flat", "plodding", "forgettable", "mediocre", "disappointing", "stupid",
                             "annoying", "incoherent", "sloppy", "ridiculous", "pretentious"], ROTTEN),
    regex_lf("negated_praise", r"\b(not|never|isn't|wasn't|hardly|nothing)\b[^.]{0,20}\b"
                               r"(funny|good|great|interesting|enough|much|worth|clever|original)\b", ROTTEN),
    regex_lf("recommends", r"(worth (seeing|watching|a look|the price)|must[- ]see|don't miss|"
                           r"one of the (best|year's best|finest|most))", FRESH),
    regex_lf("too_much", r"\b(too|overly|awfully) (long|slow|much|little|many|familiar|predictable|"
                         r"thin|silly)\b|\bfails? to\b|\bdoesn't (work|add up)\b", ROTTEN),
    exclaims_praise,
]
