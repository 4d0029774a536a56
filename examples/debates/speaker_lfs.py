"""Labeling functions for "who said it?" in the 2016 US debates (dataset ``debates``, five classes).

An example of an LF file a user keeps next to their topology (``speakers.yaml`` lists it as
``lfs: [speaker_lfs.py]``): vectorized keyword and regex LFs, and row-wise LFs that read another
column (``debate``: Pence and Kaine only spoke in the vice-presidential one). Each votes a class
index of the topology's ``classes`` or abstains (-1).
"""

from __future__ import annotations

from dawnstream.operators.labeling.lf import ABSTAIN, keyword_lf, labeling_function, regex_lf

TRUMP, CLINTON, PENCE, KAINE, MODERATOR = range(5)  # the order of `classes` in speakers.yaml


def _vp(row: dict) -> bool:
    return row.get("debate") == "VP"


def _says(row: dict, *words: str) -> bool:
    text = (row.get("text") or "").lower()
    return any(w in text for w in words)


# Moderators run the debate: they address the candidates by title, keep time, ask questions.
addresses_candidate = regex_lf("addresses_candidate", r"^(mr\.|mrs\.|secretary|governor|senator) \w+[,.?]", MODERATOR)
keeps_time = keyword_lf("keeps_time", ["two minutes", "time is up", "time's up", "next question", "segment",
                                       "our next", "audience", "let me move", "we're going to move"], MODERATOR)
asks_question = regex_lf("asks_question", r"\b(my|the|this|next|a) question\b|\bquestion (is|for)\b", MODERATOR)

# Trump speaks of Clinton in the third person and has phrases of his own.
trump_phrases = keyword_lf("trump_phrases", ["believe me", "tremendous", "disaster", "bad deal", "crooked",
                                             "nafta", "our inner cities", "frankly", "sean hannity"], TRUMP)


@labeling_function(name="talks_of_her")
def talks_of_her(row: dict) -> int:
    """Outside the VP debate, "she" and "Hillary" are Trump's words (Clinton says "I")."""
    if not _vp(row) and _says(row, "she ", "she's", "hillary", "her "):
        return TRUMP
    return ABSTAIN


@labeling_function(name="talks_of_donald")
def talks_of_donald(row: dict) -> int:
    """Outside the VP debate, "Donald" is Clinton's word for her opponent."""
    return CLINTON if not _vp(row) and _says(row, "donald") else ABSTAIN


clinton_phrases = keyword_lf("clinton_phrases", ["hillaryclinton.com", "i have a plan", "families",
                                                 "secretary of state", "as secretary", "my husband", "women"], CLINTON)


@labeling_function(name="runs_with_trump")
def runs_with_trump(row: dict) -> int:
    """In the VP debate, "Hillary Clinton" and "Senator Kaine" are Pence's words."""
    return PENCE if _vp(row) and _says(row, "hillary clinton", "senator kaine", "clinton-kaine") else ABSTAIN


@labeling_function(name="runs_with_clinton")
def runs_with_clinton(row: dict) -> int:
    """In the VP debate, "Donald Trump" and "Governor Pence" are Kaine's words."""
    return KAINE if _vp(row) and _says(row, "donald trump", "governor pence", "mike pence") else ABSTAIN


pence_phrases = keyword_lf("pence_phrases", ["indiana", "my faith", "christian", "obama-clinton", "insult-driven"],
                           PENCE)
kaine_phrases = keyword_lf("kaine_phrases", ["virginia", "you can't defend", "can't defend", "richmond",
                                             "the governor"], KAINE)


@labeling_function(name="vp_question")
def vp_question(row: dict) -> int:
    """A short question in the VP debate that names a candidate is the moderator's."""
    text = row.get("text") or ""
    return MODERATOR if _vp(row) and text.endswith("?") and _says(row, "governor pence", "senator kaine") \
        else ABSTAIN


LFS = [addresses_candidate, keeps_time, asks_question, trump_phrases, talks_of_her, talks_of_donald,
       clinton_phrases, runs_with_trump, runs_with_clinton, pence_phrases, kaine_phrases, vp_question]
