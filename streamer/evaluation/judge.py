"""Judges for open-ended answers: was a predicted answer right, and how well does it match (0-5)?

RVS and similar benchmarks score free-text answers with a language-model judge; the published numbers
used a hosted GPT-3.5 judge that no longer exists, so absolute scores depend on the judge and every
report names the one it used. Two judges ship here:

- `LocalLMJudge`, the default: a local causal LM (the packaged SmolLM2-135M-Instruct unless another
  model folder or GGUF is given) reads a fixed grading prompt and decodes greedily over the allowed
  replies only: "yes" or "no", then one digit 0-5. Deterministic, offline, but only as good as the
  model: a 135M model is a weak grader, so compare systems under the same judge, never across judges.
- `TokenOverlapJudge`: F1 of the content words shared by the reference and the prediction. No model,
  instant and exactly reproducible; for tests and as a sanity baseline.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from memory.words import words
from streamer.llm import load_llm, resolve_llm

# Function words carry no content, so they neither earn nor cost a match.
_FUNCTION_WORDS = frozenset(
    """a an and are as at be been by did do does for from had has have he her him his i in into is it its
    me my of on or our she so that the their them then there these they this those to was we were which
    who with you your""".split()
)

SYSTEM_PROMPT = (
    "You grade answers to questions about a video. Compare the predicted answer with the correct answer: "
    "it is right when it means the same thing; synonyms and paraphrases count as a match."
)
VERDICT_PROMPT = (
    "Question: {question}\nCorrect answer: {reference}\nPredicted answer: {prediction}\n"
    "Is the predicted answer right? Reply with yes or no."
)
SCORE_PROMPT = (
    "How well does the predicted answer match the correct answer, from 0 (not at all) to 5 (fully)? "
    "Reply with one digit."
)


class Verdict(NamedTuple):
    """A judge's decision: `yes` when the prediction is right; `score` from 0 (no match) to 5."""

    yes: bool
    score: int


class Judge(Protocol):
    """Grades one open-ended prediction against its reference; `name` identifies it in reports."""

    name: str

    def judge(self, question: str, reference: str, prediction: str) -> Verdict: ...


class TokenOverlapJudge:
    """Yes when the F1 of shared content words reaches `threshold`; score = 5 * F1 rounded."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.name = f"token-overlap F1 (yes at >= {threshold:g})"

    def judge(self, question: str, reference: str, prediction: str) -> Verdict:
        f1 = overlap_f1(reference, prediction)
        return Verdict(f1 >= self.threshold, math.floor(5 * f1 + 0.5))  # halves round up


def overlap_f1(reference: str, prediction: str) -> float:
    """F1 of the sets of content words (lower case, function words dropped); 0 when either has none."""
    expected, given = _content_words(reference), _content_words(prediction)
    shared = len(expected & given)
    if not shared:
        return 0.0
    precision, recall = shared / len(given), shared / len(expected)
    return 2 * precision * recall / (precision + recall)


class LocalLMJudge:
    """A local causal LM grading with a fixed prompt and greedy decoding restricted to the replies
    the prompt allows: the more probable of "yes"/"no", then the most probable digit 0-5."""

    def __init__(self, tokenizer: Any, model: Any, model_name: str) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.name = f"local LM judge: {model_name}, fixed prompt, greedy over yes/no then 0-5"
        self._verdict_ids = {word: self._token_ids(word) for word in ("yes", "no")}
        self._digit_ids = [self._token_ids(str(digit)) for digit in range(6)]

    @classmethod
    def load(cls, llm: str | None = None) -> LocalLMJudge:
        """The packaged SmolLM2-135M-Instruct, or `llm`: a local Hugging Face folder or .gguf file."""
        tokenizer, model = load_llm(resolve_llm(llm, progress=False))
        return cls(tokenizer, model, Path(llm).name if llm else "SmolLM2-135M-Instruct")

    def judge(self, question: str, reference: str, prediction: str) -> Verdict:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": VERDICT_PROMPT.format(
                    question=question.strip(), reference=reference.strip(), prediction=prediction.strip() or "(none)"
                ),
            },
        ]
        verdict = self._most_likely(messages, self._verdict_ids)
        messages += [{"role": "assistant", "content": verdict}, {"role": "user", "content": SCORE_PROMPT}]
        score = self._most_likely(messages, {str(d): ids for d, ids in enumerate(self._digit_ids)})
        return Verdict(verdict == "yes", int(score))

    def _most_likely(self, messages: list[dict[str, str]], replies: dict[str, list[int]]) -> str:
        """The reply whose token variants (any case, with or without a leading space) the model
        rates highest as the next token of the assistant's turn."""
        import torch

        ids = self.tokenizer(self._chat_text(messages), return_tensors="pt").input_ids
        with torch.inference_mode():
            logits = self.model(input_ids=ids).logits[0, -1]
        return max(replies, key=lambda reply: max(float(logits[i]) for i in replies[reply]))

    def _chat_text(self, messages: list[dict[str, str]]) -> str:
        """The conversation in the model's chat format; plain "Role: text" lines for a base model."""
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        lines = [f"{message['role'].title()}: {message['content']}" for message in messages]
        return "\n".join([*lines, "Assistant:"])

    def _token_ids(self, word: str) -> list[int]:
        """First-token ids of `word` as the model may spell it: lower/title case, with or without a space."""
        spellings = {word, word.title(), " " + word, " " + word.title()}
        return sorted({self.tokenizer.encode(s, add_special_tokens=False)[0] for s in spellings})


def _content_words(text: str) -> set[str]:
    return {word for word in words(text) if word not in _FUNCTION_WORDS}
