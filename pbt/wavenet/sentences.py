"""English sentences for the speech corpus: seeded, distinct, no download.

The text half of the corpus builder (:mod:`pbt.wavenet.corpus`): templates filled from small
word lists, varied enough in rhythm and phonemes (statements, questions, clauses, numbers)
for a WaveNet to learn speech rather than one sentence shape.
"""

from __future__ import annotations

import random

# fmt: off
_SUBJECTS = (
    "the old man", "a young girl", "my sister", "the teacher", "our neighbour", "the farmer", "a tired pilot",
    "the small boy", "her brother", "the doctor", "a quiet student", "the captain", "my uncle", "the baker",
    "a friendly dog", "the new manager", "his mother", "the singer",
)
_VERBS = (
    "painted", "carried", "found", "cleaned", "opened", "borrowed", "repaired", "described", "watched",
    "sold", "forgot", "noticed", "packed", "wrapped", "moved", "counted",
)
_OBJECTS = (
    "the blue door", "a heavy box", "three green apples", "the broken clock", "an old map",
    "the kitchen table", "a wooden boat", "the letters", "a bright lamp", "the garden gate",
    "two silver coins", "the winter coat", "a long ladder", "the red bicycle", "a basket of bread",
)
_PLACES = (
    "in the morning", "near the river", "after dinner", "before the storm", "at the station", "on the hill",
    "by the window", "during the holiday", "behind the school", "at the market", "under the bridge",
    "in the quiet village",
)
_ADVERBS = ("slowly", "carefully", "quickly", "quietly", "happily", "again", "twice", "at last")
_TEMPLATES = (
    "{S} {V} {O} {P}.",
    "{P}, {s} {V} {O}.",
    "{S} {A} {V} {O}.",
    "Did {s} really say that {s2} {V} {O}?",
    "{S} {V} {O}, and {s2} {V2} {O2}.",
    "Why has {s} {V} {O} {P}?",
    "{S} said that {s2} {V} {O} {A}.",
    "There were {n} people {P}, and {s} {V} {O}.",
)
_NUMBERS = ("two", "three", "five", "seven", "ten", "twelve", "twenty", "forty")
# fmt: on


def make_sentences(n: int, seed: int) -> list[str]:
    """``n`` distinct English sentences, the same for the same seed on every machine.

    Sentences fill templates from fixed word lists with a ``random.Random(seed)``; repeats
    are skipped, so the first ``n`` distinct ones come back in the order drawn. The lists
    and the draw order are part of a corpus's definition: changing either changes every
    corpus built for a seed. Never returns if ``n`` exceeds the number of distinct sentences
    the templates can make (far more than a corpus needs).
    """
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n:
        s, s2 = rng.sample(_SUBJECTS, 2)
        v, v2 = rng.sample(_VERBS, 2)
        o, o2 = rng.sample(_OBJECTS, 2)
        text = rng.choice(_TEMPLATES).format(
            S=s[0].upper() + s[1:],
            s=s,
            s2=s2,
            V=v,
            V2=v2,
            O=o,
            O2=o2,
            P=rng.choice(_PLACES),
            A=rng.choice(_ADVERBS),
            n=rng.choice(_NUMBERS),
        )
        seen[text[0].upper() + text[1:]] = None
    return list(seen)
