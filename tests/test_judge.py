"""Open-ended answer judges: the token-overlap judge exactly, the local LM judge on real SmolLM2 weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streamer.evaluation.benchmarks import rvs
from streamer.evaluation.benchmarks.common import BenchmarkEvent, BenchmarkSession
from streamer.evaluation.judge import (
    SYSTEM_PROMPT,
    VERDICT_PROMPT,
    Judge,
    LocalLMJudge,
    TokenOverlapJudge,
    Verdict,
    overlap_f1,
)


@pytest.mark.parametrize(
    ("reference", "prediction", "f1"),
    [
        ("A large rabbit.", "a LARGE rabbit", 1.0),
        ("They are riding bicycles.", "People riding bicycles", 0.8),  # {riding, bicycles} in 3 words
        ("a red cup", "He picked up a red cup from the table.", 2 * 0.4 * 1.0 / 1.4),  # 2 of 5 words
        ("On a city street.", "In a kitchen.", 0.0),
        ("the cat", "", 0.0),
        ("", "a cat", 0.0),
    ],
)
def test_overlap_f1_counts_shared_content_words(reference: str, prediction: str, f1: float) -> None:
    assert overlap_f1(reference, prediction) == pytest.approx(f1)


@pytest.mark.parametrize(
    ("prediction", "verdict"),
    [
        ("It was a large rabbit.", Verdict(True, 5)),
        ("A rabbit.", Verdict(True, 3)),  # F1 2/3
        ("A large dog.", Verdict(True, 3)),  # F1 1/2: exactly at the threshold
        ("A dog.", Verdict(False, 0)),
    ],
)
def test_token_overlap_judge_says_yes_from_half_overlap(prediction: str, verdict: Verdict) -> None:
    judge: Judge = TokenOverlapJudge()
    assert judge.judge("What animal walks by?", "A large rabbit.", prediction) == verdict
    assert judge.name == "token-overlap F1 (yes at >= 0.5)"


def test_token_overlap_threshold_is_configurable_and_named() -> None:
    strict = TokenOverlapJudge(threshold=0.9)
    assert strict.judge("Q?", "A large rabbit.", "A rabbit.") == Verdict(False, 3)
    assert strict.name == "token-overlap F1 (yes at >= 0.9)"


@pytest.fixture(scope="module")
def lm_judge() -> LocalLMJudge:
    return LocalLMJudge.load()


def test_local_judge_is_deterministic_and_named_in_the_rvs_report(lm_judge: LocalLMJudge, bikes_clip: Path) -> None:
    question, reference, prediction = "What animal was shown?", "a cat", "It was a cat."
    verdict = lm_judge.judge(question, reference, prediction)
    event = BenchmarkEvent("clip/0", 5.0, "open", question, question, reference, "demo", "open-ended")

    report = rvs.score([BenchmarkSession("RVS", bikes_clip, (event,))], {"clip/0": prediction}, lm_judge)

    assert isinstance(verdict.yes, bool) and verdict.score in range(6)
    assert report.overall == {  # the same verdict again: greedy decoding is deterministic
        "accuracy (share judged yes, over all questions)": float(verdict.yes),
        "mean judge score (0-5, over all questions)": float(verdict.score),
    }
    assert report.notes["judge"] == lm_judge.name
    assert lm_judge.name.startswith("local LM judge: SmolLM2-135M-Instruct")


def test_local_judge_verdict_is_the_models_own_greedy_reply(lm_judge: LocalLMJudge) -> None:
    """Where the model's unrestricted next token is already a yes/no word, the judge reports it."""
    tokenizer, model = lm_judge.tokenizer, lm_judge.model
    question, reference, prediction = "What did the sign say?", "KESTREL", "The sign said Kestrel."
    user = VERDICT_PROMPT.format(question=question, reference=reference, prediction=prediction)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with torch.inference_mode():
        logits = model(input_ids=tokenizer(text, return_tensors="pt").input_ids).logits[0, -1]
    greedy = tokenizer.decode([int(logits.argmax())]).strip().lower()
    assert greedy in ("yes", "no"), f"the model's own reply '{greedy}' is not a verdict; pick another case"
    assert lm_judge.judge(question, reference, prediction).yes is (greedy == "yes")
