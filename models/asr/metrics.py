"""Recognition quality metrics: pure functions over strings."""

from __future__ import annotations

import re

_NON_WORD = re.compile(r"[^a-z0-9' ]+")


def normalize_words(text: str) -> list[str]:
    """Lower-case words with punctuation removed (hyphens and slashes split words)."""
    cleaned = _NON_WORD.sub(" ", text.lower().replace("’", "'"))
    return [w.strip("'") for w in cleaned.split() if w.strip("'")]


def word_edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between two word sequences (substitutions, insertions, deletions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(ref: str, hyp: str) -> float:
    """Word error rate of ``hyp`` against ``ref``, ignoring case and punctuation.

    0.0 is perfect; it can exceed 1.0 when the hypothesis inserts many words. An empty
    reference gives 0.0 for an empty hypothesis and 1.0 otherwise.
    """
    ref_words, hyp_words = normalize_words(ref), normalize_words(hyp)
    if not ref_words:
        return 0.0 if not hyp_words else 1.0
    return word_edit_distance(ref_words, hyp_words) / len(ref_words)


def corpus_wer(refs: list[str], hyps: list[str]) -> float:
    """Word error rate over many utterances: total edits over total reference words."""
    if len(refs) != len(hyps):
        raise ValueError("refs and hyps must pair up")
    edits = words = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        ref_words = normalize_words(ref)
        edits += word_edit_distance(ref_words, normalize_words(hyp))
        words += len(ref_words)
    return edits / words if words else 0.0
