"""Answers decoded together: a batched step equals each row's own step, questions asked at once get what
they get alone, rows past the limit wait, a cancelled row leaves, and ingest's passes go first."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import torch
from tiny_adapter import SyntheticFrames, synthetic_frame, tiny_model
from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

from memory.kv_cache import StreamingCache
from streamer.decoding import (
    NO_REPEAT_NGRAM,
    REPETITION_PENALTY,
    BatchedCache,
    ModelScheduler,
    SchedulerLimits,
    TokenPicker,
    ingest_passes,
    pick_tokens,
)
from streamer.engine import Engine, EngineConfig
from streamer.engine_config import AnswerConfig
from streamer.engine_data import AnswerHandle
from streamer.query import Answer

QUESTIONS = (
    ("north", "What is moving?"),
    ("south", "Where is the ball?"),
    ("north", "What colour is the ball?"),
    ("south", "Is anything new?"),
    ("north", "What happened first?"),
    ("south", "How many things are there?"),
    ("north", "Describe the scene."),
    ("south", "What is at the top?"),
)


@pytest.fixture
def adapter() -> SyntheticFrames:
    # Grouped-query attention (6 query heads over 3 key/value heads), like SmolLM2.
    return SyntheticFrames(tiny_model(num_attention_heads=6, num_key_value_heads=3))


def filled_cache(adapter: SyntheticFrames, tokens: int, seed: int) -> StreamingCache:
    cache = StreamingCache(adapter.num_layers)
    ids = torch.randint(0, adapter.vocab, (1, tokens), generator=torch.Generator().manual_seed(seed))
    adapter.prefill(adapter.embed_ids(ids), cache)
    return cache


def test_tokens_picked_for_a_step_are_those_transformers_controls_pick_row_by_row() -> None:
    generator = torch.Generator().manual_seed(3)
    vocab = 50
    histories = [[], [4], [4, 9, 4], [7, 8, 3, 7, 8], [1, 1, 1, 1], [2, 5, 2, 5, 2, 5], [6, 0, 6, 0, 6, 3, 6, 0]]
    logits = torch.randn(len(histories), vocab, generator=generator) * 3
    # Make the banned or penalised tokens the likeliest, so the controls decide the pick.
    for row, ids in enumerate(histories):
        logits[row, ids] += 20
    logits[-1, 6] += 10  # the last history's most likely token repeats "6 0 6"
    pickers = [TokenPicker() for _ in histories] + [TokenPicker(controls=False)]
    for picker, ids in zip(pickers, [*histories, histories[-1]], strict=True):
        picker.ids = list(ids)
    rows = torch.cat([logits, logits[-1:]])
    reference = LogitsProcessorList(
        [RepetitionPenaltyLogitsProcessor(REPETITION_PENALTY), NoRepeatNGramLogitsProcessor(NO_REPEAT_NGRAM)]
    )

    def transformers_pick(row: int, ids: list[int]) -> int:
        scores = logits[row : row + 1].clone()
        if ids:
            scores = reference(torch.tensor([ids]), scores)  # type: ignore[arg-type]
        return int(torch.argmax(scores[0]))

    expected = [transformers_pick(row, ids) for row, ids in enumerate(histories)] + [int(torch.argmax(logits[-1]))]
    before = rows.clone()
    assert pick_tokens(pickers, rows) == expected
    assert torch.equal(rows, before)  # the caller's logits are left as they were
    assert [picker.ids[-1] for picker in pickers] == expected
    assert expected[-2] != expected[-1]  # the controls changed a pick
    single = TokenPicker()
    single.ids = [7, 8, 3, 7, 8]
    assert single.pick(logits[3]) == expected[3] and single.ids[-1] == expected[3]


def test_a_batched_step_equals_each_rows_own(adapter: SyntheticFrames) -> None:
    caches = [filled_cache(adapter, tokens, seed) for seed, tokens in enumerate((37, 5, 90))]
    tokens = [11, 200, 42]
    batch = BatchedCache(caches[0], 4, 128)
    for cache in caches:
        batch.add(cache)
    for _ in range(3):  # three steps: each writes at the row's own position
        with adapter.forward_lock:
            together = adapter.batch_next_token_logits(tokens, batch)
        batch.advance()
        alone = [adapter.next_token_logits(adapter.token_embeds(t), c) for t, c in zip(tokens, caches, strict=True)]
        for row, logits in enumerate(alone):
            torch.testing.assert_close(together[row], logits, rtol=1e-5, atol=1e-5)
        tokens = [int(torch.argmax(logits)) for logits in alone]
    assert batch.lengths == [cache.length for cache in caches]
    # A row that leaves is replaced by the last; the others decode on unchanged.
    assert batch.drop(0) == 2
    caches, tokens = [caches[2], caches[1]], [tokens[2], tokens[1]]
    with adapter.forward_lock:
        together = adapter.batch_next_token_logits(tokens, batch)
    for row, (token, cache) in enumerate(zip(tokens, caches, strict=True)):
        torch.testing.assert_close(together[row], adapter.next_token_logits(adapter.token_embeds(token), cache))


def test_the_decode_batch_shrinks_when_its_long_rows_leave(adapter: SyntheticFrames) -> None:
    """A long context and a burst of rows grow the batch; once they have left, the rows still decoding get
    a batch their size again, and their tokens are what they are alone."""
    scheduler, alone = ModelScheduler(adapter), ModelScheduler(adapter)
    try:
        solo = list(alone.decode(filled_cache(adapter, 20, 0), TokenPicker(False), 7, 40))
        caches = [filled_cache(adapter, 600 if seed == 1 else 20, seed) for seed in range(14)]
        steady = scheduler.decode(caches[0], TokenPicker(False), 7, 40)
        others = [scheduler.decode(cache, TokenPicker(False), 5, 2) for cache in caches[1:]]
        tokens = []
        for token in steady:
            tokens.append(token)
            if len(tokens) == 10:
                assert all(len(list(row)) == 2 for row in others), "the other rows have left"
                stats = scheduler.stats
                assert stats.max_batch == 14 and stats.batch_slots == 4 and stats.batch_tokens < 200
                assert stats.resizes >= 1
        assert tokens == solo
    finally:
        scheduler.close()
        alone.close()


@pytest.mark.parametrize("rows", [0, 3])
def test_reads_packed_into_a_decode_step_equal_each_pass_alone(adapter: SyntheticFrames, rows: int) -> None:
    """Reads of different lengths after contexts of different lengths, packed into one pass with a decode
    step of `rows` rows (or none): each read's logits and new keys are its own pass's, each row's logits
    its own step's, and the caches forked from are untouched."""
    contexts = [filled_cache(adapter, tokens, seed) for seed, tokens in enumerate((30, 8, 61))]
    questions = [adapter.embed_ids(torch.tensor([ids])) for ids in ([5, 9, 14], [77] * 9, [1, 2, 3, 4, 5])]
    alone = [context.fork() for context in contexts]
    together = [context.fork() for context in contexts]
    expected = [adapter.next_token_logits(q, cache) for q, cache in zip(questions, alone, strict=True)]
    decoding = [filled_cache(adapter, tokens, seed) for seed, tokens in enumerate((44, 3, 70)[:rows], start=10)]
    tokens = [11, 200, 42][:rows]
    step_alone = [
        adapter.next_token_logits(adapter.token_embeds(t), c.fork()) for t, c in zip(tokens, decoding, strict=True)
    ]
    batch = BatchedCache(decoding[0], 4, 128) if rows else None
    for cache in decoding:
        assert batch is not None
        batch.add(cache)
    with adapter.forward_lock:
        step, found = adapter.packed_logits(tokens, batch, list(zip(questions, together, strict=True)))
    assert step.shape[0] == rows
    for row, logits in enumerate(step_alone):
        torch.testing.assert_close(step[row], logits, rtol=1e-5, atol=1e-5)
    for one, other, cache, packed in zip(expected, found, alone, together, strict=True):
        torch.testing.assert_close(other, one, rtol=1e-5, atol=1e-5)
        assert packed.length == cache.length
        for layer in range(adapter.num_layers):
            torch.testing.assert_close(packed.keys(layer), cache.keys(layer), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(packed.values(layer), cache.values(layer), rtol=1e-5, atol=1e-5)
    # The contexts they were forked from are as they were; the step wrote each row's token at its place.
    assert [context.length for context in contexts] == [30, 8, 61]
    if batch is not None:
        batch.advance()
        assert batch.lengths == [c.length + 1 for c in decoding]


def test_a_read_goes_in_the_decode_step_of_the_rows_decoding(adapter: SyntheticFrames) -> None:
    """A question's read that comes while another pass runs goes in the next decode step's pass, not a pass
    of its own: its logits are its own pass's, and the row's tokens are what it decodes alone."""
    scheduler, alone = ModelScheduler(adapter), ModelScheduler(adapter)
    release, holding = threading.Event(), threading.Event()
    try:
        solo = list(alone.decode(filled_cache(adapter, 20, 0), TokenPicker(False), 7, 30))
        question = adapter.embed_ids(torch.tensor([[4, 8, 15, 16, 23, 42]]))
        expected = adapter.next_token_logits(question, filled_cache(adapter, 12, 1))

        def hold() -> None:
            holding.set()
            release.wait(10)

        decoding, context, found = filled_cache(adapter, 20, 0), filled_cache(adapter, 12, 1), []
        # The blocking pass holds the model's lock: everything that runs the model directly is done first.
        blocker = threading.Thread(target=scheduler.run, args=(hold,))
        blocker.start()
        assert holding.wait(10)
        row = scheduler.decode(decoding, TokenPicker(False), 7, 30)
        adapter.scheduler = scheduler  # the read goes through the scheduler, as a question's does
        reader = threading.Thread(target=lambda: found.append(adapter.next_token_logits(question, context)))
        reader.start()
        while scheduler.stats.waiting < 1:
            time.sleep(0.001)
        release.set()
        reader.join(10)
        blocker.join(10)
        adapter.scheduler = None
        assert list(row) == solo
        torch.testing.assert_close(found[0], expected, rtol=1e-5, atol=1e-5)
        assert context.length == 18
        stats = scheduler.stats
        assert stats.step_reads == 1 and stats.passes == 2 and stats.steps == 30
    finally:
        adapter.scheduler = None
        scheduler.close()
        alone.close()


def test_a_failed_step_fails_its_rows_and_reads_and_the_scheduler_goes_on(
    adapter: SyntheticFrames, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = ModelScheduler(adapter)
    release, holding = threading.Event(), threading.Event()
    packed = adapter.packed_logits
    failures = [RuntimeError("the device ran out of memory")]

    def failing_once(*args: object) -> object:
        if failures:
            raise failures.pop()
        return packed(*args)  # type: ignore[arg-type]

    def hold() -> None:
        holding.set()
        release.wait(10)

    monkeypatch.setattr(adapter, "packed_logits", failing_once)
    question = adapter.embed_ids(torch.tensor([[4, 8, 15, 16]]))
    try:
        decoding, context = filled_cache(adapter, 20, 0), filled_cache(adapter, 12, 1)
        blocker = threading.Thread(target=scheduler.run, args=(hold,))
        blocker.start()
        assert holding.wait(10)
        row = scheduler.decode(decoding, TokenPicker(False), 7, 30)
        errors: list[BaseException] = []

        def read() -> None:
            try:
                adapter.next_token_logits(question, context)
            except RuntimeError as error:
                errors.append(error)

        adapter.scheduler = scheduler
        reader = threading.Thread(target=read)
        reader.start()
        while scheduler.stats.waiting < 1:
            time.sleep(0.001)
        release.set()
        reader.join(10)
        with pytest.raises(RuntimeError, match="ran out of memory"):
            list(row)
        assert [str(e) for e in errors] == ["the device ran out of memory"]
        # The scheduler goes on: the next read is answered.
        adapter.scheduler = None
        expected = adapter.next_token_logits(question, filled_cache(adapter, 12, 1))
        context = filled_cache(adapter, 12, 1)
        adapter.scheduler = scheduler
        found = adapter.next_token_logits(question, context)
        torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)
        assert scheduler.stats.decoding == 0
    finally:
        adapter.scheduler = None
        blocker.join(10)
        scheduler.close()


def engine_with_streams(adapter: SyntheticFrames, **answer: object) -> Engine:
    config = EngineConfig(answer=AnswerConfig(max_new_tokens=12, grounded=False, **answer))
    engine = Engine(adapter, config)
    for stream_id in ("north", "south"):
        engine.add_stream(stream_id)
    for index in range(6):
        engine.push_frame("north", synthetic_frame(index))
        engine.push_frame("south", synthetic_frame(index + 40))
    return engine


def ask_together(
    handles: list[AnswerHandle], stagger_s: float, during: Callable[[], None] | None = None
) -> list[Answer]:
    """Answer every handle in its own thread, each starting `stagger_s` after the previous one."""
    answers: list[Answer | None] = [None] * len(handles)

    def run(index: int) -> None:
        time.sleep(index * stagger_s)
        answers[index] = handles[index].result()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(handles))]
    for thread in threads:
        thread.start()
    if during is not None:
        during()
    for thread in threads:
        thread.join(timeout=120)
    assert all(answer is not None for answer in answers)
    return [answer for answer in answers if answer is not None]


def test_questions_asked_together_get_what_they_get_alone(adapter: SyntheticFrames) -> None:
    engine = engine_with_streams(adapter)
    scheduler = adapter.scheduler
    assert scheduler is not None
    # Two handles per question on the same view of the memory: one answered alone, one with the others.
    alone, together = [], []
    for index, (stream_id, question) in enumerate(QUESTIONS):
        if index == 4:  # the later questions see more of the streams
            engine.push_frame("north", synthetic_frame(6))
            engine.push_frame("south", synthetic_frame(46))
        alone.append(engine.ask(stream_id, question))
        together.append(engine.ask(stream_id, question))
    solo = [handle.result() for handle in alone]
    assert scheduler.stats.max_batch == 1

    def ingest() -> None:
        for index in range(7, 10):
            engine.push_frame("north", synthetic_frame(index))

    batched = ask_together(together, 0.01, ingest)
    assert scheduler.stats.max_batch >= 4, "questions asked at once must be decoded together"
    assert scheduler.stats.step_reads >= 1, "a question read while others decode goes in their step's pass"
    for one, other in zip(solo, batched, strict=True):
        assert other.tokens == one.tokens == 12
        assert other.text == one.text
        assert other.frames_read == one.frames_read
    assert scheduler.stats.decoding == 0


def test_rows_past_the_limit_wait_and_a_cancelled_row_leaves(adapter: SyntheticFrames) -> None:
    engine = engine_with_streams(adapter, max_rows=2)
    scheduler = adapter.scheduler
    assert scheduler is not None
    stop = threading.Event()
    handles = [engine.ask(stream_id, question) for stream_id, question in QUESTIONS[:4]]
    cancelled = engine.ask("north", QUESTIONS[0][1], cancel=stop)
    solo = [engine.ask(stream_id, question).result() for stream_id, question in QUESTIONS[:4]]
    stop.set()
    answers = ask_together([cancelled, *handles], 0.0)
    assert answers[0].cancelled and answers[0].tokens == 1
    assert [a.text for a in answers[1:]] == [a.text for a in solo]
    assert scheduler.stats.max_batch == 2
    assert scheduler.stats.decoding == 0


def test_ingest_passes_go_before_answer_passes(adapter: SyntheticFrames) -> None:
    scheduler = ModelScheduler(adapter, SchedulerLimits())
    order: list[str] = []
    release = threading.Event()
    holding = threading.Event()

    def hold() -> None:
        holding.set()
        release.wait(10)
        order.append("held")

    def submit(name: str, ingest: bool) -> threading.Thread:
        def run() -> None:
            if ingest:
                with ingest_passes():
                    scheduler.run(lambda: order.append(name))
            else:
                scheduler.run(lambda: order.append(name))

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    try:
        blocker = threading.Thread(target=scheduler.run, args=(hold,))
        blocker.start()
        assert holding.wait(10)
        threads = []
        for name, ingest in (("answer 1", False), ("answer 2", False), ("frame 1", True), ("frame 2", True)):
            threads.append(submit(name, ingest))
            while scheduler.stats.waiting < len(threads):  # queued in this order
                time.sleep(0.001)
        release.set()
        for thread in [blocker, *threads]:
            thread.join(10)
        assert order == ["held", "frame 1", "frame 2", "answer 1", "answer 2"]
        assert scheduler.stats.passes == 5
    finally:
        scheduler.close()


def test_a_question_does_not_wait_for_a_frame_being_prefilled(adapter: SyntheticFrames) -> None:
    """A question asked while a frame waits for its prefill takes its view at once: the memory as it was
    before that frame, answered as a question asked before it is; the frame lands whole, for later ones."""
    engine = engine_with_streams(adapter)
    scheduler = adapter.scheduler
    assert scheduler is not None
    release, holding = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait(30)

    before = engine.ask("north", "What is moving?")
    blocker = threading.Thread(target=scheduler.run, args=(hold,))
    blocker.start()
    assert holding.wait(10)
    pusher = threading.Thread(target=engine.push_frame, args=("north", synthetic_frame(6)))
    pusher.start()
    while scheduler.stats.waiting < 1:  # the frame's prefill waits for its turn
        time.sleep(0.001)
    asked: list[AnswerHandle] = []
    asker = threading.Thread(target=lambda: asked.append(engine.ask("north", "What is moving?")))
    asker.start()
    asker.join(5)
    taken_at_once = not asker.is_alive()
    release.set()
    for thread in (asker, pusher, blocker):
        thread.join(30)
    assert taken_at_once, "the question waited for the frame's prefill"
    during, first = asked[0].result(), before.result()
    assert during.as_of == first.as_of == synthetic_frame(5).stream_time
    assert (during.text, during.frames_read) == (first.text, first.frames_read)
    later = engine.ask("north", "What is moving?").result()
    assert later.as_of == synthetic_frame(6).stream_time
