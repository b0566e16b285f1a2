"""The one word splitter: text as lower-case runs of letters and digits, and those words normalised.

`words` is the plain split. `normal_words` also folds what OCR and plurals change without changing
the word, so a description and a question meet: 0 counts as o, 1 and i as l, 5 as s, and a final "s"
is dropped from words of four or more characters ("Cl0SED" and "closed" are one word).
"""

from __future__ import annotations

import re

_RUN = re.compile(r"[a-z0-9]+")
_LOOK_ALIKE = str.maketrans({"0": "o", "1": "l", "i": "l", "5": "s"})


def words(text: str) -> list[str]:
    """`text` lower-cased and split into runs of letters and digits."""
    return _RUN.findall(text.lower())


def normal_words(text: str) -> list[str]:
    """`words(text)` with OCR look-alikes folded and a plural "s" dropped (see the module docstring)."""
    found = []
    for run in words(text):
        word = run.translate(_LOOK_ALIKE)
        if len(word) >= 4 and word.endswith("s"):
            word = word[:-1]
        found.append(word)
    return found
