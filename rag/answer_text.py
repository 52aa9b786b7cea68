"""Answer text: the short answer and cited passages from a generation, and SQuAD-style matching.

``extract_answer`` turns what a small chat LM writes ("The capital is Paris [2].") into a short answer
("Paris") and the passages it cites. Citations may be passage numbers (``[2]``, 1-based in prompt
order) or passage ids (``[doc-17]``); anything that names no passage of the prompt is dropped, so
citations are always a subset of the passages the reader saw.

``exact_match`` and ``token_f1`` follow the SQuAD v1.1 evaluation script (lower-case, drop
punctuation and the articles a/an/the, collapse white space) and take the best over gold aliases.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_CITATION = re.compile(r"\[([^\[\]]{1,200})\]")
_LEADS = re.compile(
    r"^(?:(?:the\s+)?(?:short\s+|final\s+)?answer\s*)?(?:to\s+(?:this|the)\s+question\s*)?(?:is\s*)?[:\-]\s*"
    r"|^(?:the\s+)?(?:short\s+|final\s+)?answer(?:\s+to\s+(?:this|the)\s+question)?\s+is\s+"
    r"|^to\s+(?:this|the)\s+question\s+is\s*:?\s*|^(?:it\s+is|it's)\s+", re.IGNORECASE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def parse_citations(raw: str, passage_ids: Sequence[str]) -> list[str]:
    """Passage ids cited in ``raw`` as ``[n]`` (1-based position) or ``[id]``, in order, deduplicated."""
    cited: list[str] = []
    known = set(passage_ids)
    for match in _CITATION.finditer(raw):
        for part in re.split(r"\s*,\s*", match.group(1).strip()):
            doc_id = None
            if part.isdigit() and 1 <= int(part) <= len(passage_ids):
                doc_id = passage_ids[int(part) - 1]
            elif part in known:
                doc_id = part
            if doc_id is not None and doc_id not in cited:
                cited.append(doc_id)
    return cited


def short_answer(raw: str) -> str:
    """The first line of ``raw`` without citation markers, a leading "Answer:" or a final period."""
    text = _CITATION.sub("", raw).strip()
    text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    text = _LEADS.sub("", text).strip()
    return text.rstrip(" .;:,").strip()


def passages_containing(answer: str, passages: Sequence[tuple[str, str]]) -> list[str]:
    """Ids of ``(id, text)`` passages whose normalised text contains the normalised answer."""
    needle = normalize_answer(answer)
    if not needle:
        return []
    return [doc_id for doc_id, text in passages if f" {needle} " in f" {normalize_answer(text)} "]


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """Best token-overlap F1 against any gold answer (SQuAD v1.1)."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        ref = normalize_answer(gold).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            precision, recall = common / len(pred), common / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
        elif not pred and not ref:
            best = max(best, 1.0)
    return best
