"""Amar's prompt around the knowledge, in the reader's own chat template (no ChatML written here).

The user's message is the knowledge header, the items (one line each), then the question; the
assistant's turn starts with "The answer is" (in every mode) so that a small chat LM names the answer
first instead of writing an essay around it. :func:`chat_pieces` finds the turn markers around them
with ``tokenizer.apply_chat_template`` and the answer's end-of-turn token from the generation config.
For SmolLM2 the pieces are the ChatML ones Amar always used, token for token (a test checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sparsa.errors import ConfigError

KNOWLEDGE_HEADER = "Knowledge:\n"
QUESTION_LINE = "Question: {question}\nAnswer with one name only."
ANSWER_START = "The answer is"
_MARK = "SPARSAMARK7Q"  # plain letters: templates that trim or escape content leave it whole


@dataclass(frozen=True, slots=True)
class ChatPieces:
    """Where a chat template puts one user message and the assistant's answer.

    ``start`` is what opens a conversation (a BOS token) when the user turn itself lacks it;
    ``user_open`` / ``user_close`` surround the user's message (``user_close`` runs through the
    assistant's generation prompt); ``end_of_turn`` is the token that ends the assistant's answer.
    The template's default system turn (SmolLM2 and Qwen2.5 add one when none is given) is left out,
    so the prompt is the same for every turn and heads trained on it keep their meaning.
    """

    start: str
    user_open: str
    user_close: str
    end_of_turn: int

    def prefix(self, knowledge: bool) -> str:
        return self.start + self.user_open + (KNOWLEDGE_HEADER if knowledge else "")

    def suffix(self, question: str) -> str:
        return QUESTION_LINE.format(question=question) + self.user_close + ANSWER_START


def chat_pieces(tokenizer, stop_ids: Sequence[int] = ()) -> ChatPieces:
    """:class:`ChatPieces` from ``tokenizer.apply_chat_template``: the text a second user turn adds to a
    conversation (so no default system turn), split around a marker; ``end_of_turn`` is the first id
    of ``stop_ids`` (the generation config's end tokens) that the template writes after an assistant
    message, else the tokenizer's end-of-sequence token."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("the LM's tokenizer has no chat template; Amar needs an instruct (chat) model")

    def render(messages: list[dict], generation: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    first = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    alone = render([{"role": "user", "content": _MARK}], True)
    try:
        before, after = render(first, False), render([*first, {"role": "user", "content": _MARK}], True)
        turn = after[len(before):] if after.startswith(before) and _MARK in after[len(before):] else alone
        closing = before[before.rindex("Hello") + len("Hello"):]
    except Exception:  # noqa: BLE001 - templates raise their own errors on conversations they refuse
        turn, closing = alone, ""
    if turn.count(_MARK) != 1:
        raise ConfigError("the chat template does not render a user message as given")
    user_open, user_close = turn.split(_MARK)
    bos = getattr(tokenizer, "bos_token", None) or ""
    start = bos if bos and alone.startswith(bos) and not user_open.startswith(bos) else ""
    closing_ids = tokenizer(closing, add_special_tokens=False)["input_ids"] if closing else []
    ends = [i for i in closing_ids if i in set(stop_ids)]
    end = ends[0] if ends else tokenizer.eos_token_id if tokenizer.eos_token_id is not None else None
    if end is None:
        raise ConfigError("the LM names no end-of-turn token (generation config or tokenizer eos)")
    return ChatPieces(start, user_open, user_close, int(end))
