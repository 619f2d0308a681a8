"""Reading a verifier's free text: binary verdicts, 1-10 scores and A/B preferences.

Models write verdicts in many shapes ("Correctness: <incorrect>", "**Correct**", "Verdict: not
correct", "Score: 7/10", "I'd give it an 8 out of 10", "Preferred solution: <B>"). The rules, in
order of trust:
  1. a verdict right after a marker word ("Verdict:", "Correctness:", "Score:", "Preferred
     solution:", "the response is:" ...); the LAST such marker in the text wins (models often
     restate or correct themselves, and the instructions ask for the verdict at the end);
  2. failing that, the last unmarked verdict in the text (binary: the last standalone
     correct/incorrect word; score: the last "N/10" or "N out of 10", then the last "**N**";
     preference: the last "Solution A is better"-like phrase).
A marker line that restates the template ("<correct> or <incorrect>", "Score: <score>", "A or B")
is skipped, so an echoed instruction never counts as a verdict. Every parser returns None when
nothing usable is found; callers count that as a parse failure and substitute their default.
"""

from __future__ import annotations

import re

# --- binary verdicts ---------------------------------------------------------------------------

# "incorrect" is one word, so \bcorrect\b never fires inside it (no word boundary between n and c).
_NEGATED = r"(?:\bnot|\bnever|n't)\s+(?:\w+\s+)?correct\b"
_VERDICT_WORD = re.compile(
    r"(?P<neg>" + _NEGATED + r")|\b(?P<word>incorrect|correct|wrong|invalid|valid)\b",
    re.IGNORECASE,
)
_BINARY_MARKER = re.compile(
    r"(?:correctness|verdict|judge?ment|judge|conclusion|final\s+answer|the\s+(?:response|solution|answer)"
    r"\s+is|therefore)\s*[:\-]?",
    re.IGNORECASE,
)
# Template echoes: "<correct> or <incorrect>", "correct/incorrect", 'the line "Verdict: correct" or the
# line "Verdict: incorrect"': two verdict words joined by "or" / "/" on one line.
_BINARY_ECHO = re.compile(
    r"\b(?:in)?correct\b[^\n]{0,25}?(?:\bor\b|/|\|)[^\n]{0,25}?\b(?:in)?correct\b", re.IGNORECASE
)
_POSITIVE = {"correct", "valid"}
_NEGATIVE = {"incorrect", "wrong", "invalid"}


def _verdicts_in(text: str) -> list[bool]:
    """Every verdict word in `text` in order: True = correct, False = incorrect."""
    out: list[bool] = []
    for m in _VERDICT_WORD.finditer(_BINARY_ECHO.sub(" ", text)):
        if m.group("neg"):
            out.append(False)
        else:
            out.append(m.group("word").lower() in _POSITIVE)
    return out


def parse_binary_verdict(text: str) -> bool | None:
    """True (correct), False (incorrect) or None (no verdict found) from a CoT-Binary answer."""
    if not text:
        return None
    text = _BINARY_ECHO.sub(" ", text)
    # 1. The last marker followed (on its line, within a few words) by a verdict.
    for marker in reversed(list(_BINARY_MARKER.finditer(text))):
        line = text[marker.end():].split("\n", 1)[0]
        if not line.strip():  # verdict on the next non-empty line
            rest = [ln for ln in text[marker.end():].split("\n")[1:] if ln.strip()]
            line = rest[0] if rest else ""
        found = _verdicts_in(line[:80])
        if found:  # the word right after the marker is the verdict ("incorrect, the step is correct")
            return found[0]
    # 2. The last standalone verdict word anywhere.
    found = _verdicts_in(text)
    return found[-1] if found else None


# --- 1-10 scores -------------------------------------------------------------------------------

_NUM = r"(\d+(?:\.\d+)?)"
# A marker word, then up to 15 characters without digits or a line break, then the number.
_SCORE_MARKER = re.compile(
    r"(?:\b(?:score|rating|grade|rated?)\b|\bgive\s+(?:it|this|the\s+\w+)\b)[^\d\n]{0,15}?" + _NUM,
    re.IGNORECASE,
)
_OUT_OF_TEN = re.compile(_NUM + r"\s*(?:/|out\s+of)\s*10\b", re.IGNORECASE)
_BOLD_NUM = re.compile(r"\*\*\s*" + _NUM + r"\s*(?:/\s*10)?\s*\*\*")


def parse_score(text: str, low: float = 1, high: float = 10) -> float | None:
    """The verifier's score in [low, high] from a CoT-Score answer, or None.

    Tries, each taking the last match: "Score: N" and its variants (rating, grade, "I give it
    an N"), then "N/10" / "N out of 10", then a bold "**N**". A number outside [low, high]
    ("Score: 85", "Score: 0") is not a score: that candidate is skipped. Any other bare number is
    ignored because the reasoning usually contains the problem's numbers.
    """
    if not text:
        return None
    for pattern in (_SCORE_MARKER, _OUT_OF_TEN, _BOLD_NUM):
        for m in reversed(list(pattern.finditer(text))):
            value = float(m.group(1))
            if low <= value <= high:
                return value
    return None


# --- A/B preferences ---------------------------------------------------------------------------

# The letter is matched case-sensitively so the article "a" never reads as a verdict.
_LETTER = r"\b(?-i:([AB]))\b"
_PREF_MARKER = re.compile(
    r"(?:\bpreferred\b|\bprefer\b|\bbetter\s+(?:solution|response|answer)\b|\bwinner\b|\bverdict\b|"
    r"\bjudge?ment\b|\bi\s+(?:would\s+)?(?:choose|pick|select)\b)[^\n]{0,25}?" + _LETTER,
    re.IGNORECASE,
)
_PREF_PHRASE = re.compile(
    r"\b(?:solution|response|answer|option)\s+" + _LETTER + r"\s+(?:is|was)\s+(?:\w+\s+)?"
    r"(?:better|preferred|correct|superior|stronger)",
    re.IGNORECASE,
)
_PREF_ECHO = re.compile(r"\bA\b[^\n]{0,25}?(?:\bor\b|/|\|)[^\n]{0,25}?\bB\b")


def parse_preference(text: str) -> str | None:
    """"A" or "B" from a tournament comparison answer, or None.

    The last "Preferred solution: X" (or prefer/choose/winner/verdict variants) wins; failing that,
    the last "Solution X is better/correct" phrase. "A or B" template echoes are removed first.
    """
    if not text:
        return None
    cleaned = _PREF_ECHO.sub(" ", text)
    for pattern in (_PREF_MARKER, _PREF_PHRASE):
        matches = list(pattern.finditer(cleaned))
        if matches:
            return matches[-1].group(1).upper()
    return None
