"""`--model`, `--device`, `--dtype`, `--download`: the checks, the hub decisions, and a tiny VLM end to end.

Nothing is downloaded: this machine has no hub access, so the download decision is checked with the
hub library's call replaced, and the cache lookup against a cache folder laid out as the hub lays it
out. Tiny random checkpoints (`scripts/tiny_vlm.py`) run `streamer replay --model FOLDER` and `streamer
serve --model FOLDER` with a websocket question for each family the VLM adapter reads.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import huggingface_hub
import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError
from server_helpers import ask, connect, wait_for_frames, ws_url

from streamer.adapters.tiny import ARCHITECTURES, save_tiny_vlm
from streamer.adapters.vlm import VisionLanguageAdapter
from streamer.cli import build_parser, main
from streamer.errors import UserError
from streamer.evaluation.cli import eval_models
from streamer.llm import resolve_llm
from streamer.models import ModelChoice, check_choice, load_adapter, resolve_device, resolve_dtype
from streamer.server.app import ServerThread, create_app
from streamer.server.cli import load_engine, open_initial_streams, serve_config
from streamer.server.config import build_config

HUB_ID = "tiny-org/tiny-vlm"
FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random checkpoint folder per --arch."""
    root = tmp_path_factory.mktemp("tiny-vlms")
    return {arch: save_tiny_vlm(root / arch, arch) for arch in ARCHITECTURES}


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_as_hub(cache: Path, hub_id: str, folder: Path) -> Path:
    """Lay `folder` into `cache` as the hub library lays out a downloaded snapshot; returns the snapshot."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    return snapshot


# The checks, before anything loads


@pytest.mark.parametrize(
    ("choice", "says"),
    [
        (ModelChoice(device="gpu"), "Unknown --device 'gpu': give cpu, cuda, cuda:N or auto."),
        (ModelChoice(dtype="int4"), "Unknown --dtype 'int4'"),
        (ModelChoice(model="/no/such/folder"), "is neither a folder nor a Hugging Face model id"),
        (ModelChoice(model="not a model"), "is neither a folder nor a Hugging Face model id"),
    ],
)
def test_bad_options_are_one_sentence(choice: ModelChoice, says: str) -> None:
    with pytest.raises(UserError, match=says):
        check_choice(choice)


def test_a_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"has no config\.json; give a Hugging Face checkpoint folder"):
        check_choice(ModelChoice(model=str(tmp_path)))


def test_a_text_only_checkpoint_is_sent_to_llm_with_the_families_listed() -> None:
    with pytest.raises(UserError) as raised:
        check_choice(ModelChoice(model=str(resolve_llm())))
    message = str(raised.value)
    assert "is a 'llama' model (a text-only LM goes to --llm)" in message
    assert message.endswith("families idefics3, llava_onevision, qwen2_5_vl.")


def test_llm_with_a_vlm_checkpoint_is_refused(tiny: dict[str, Path]) -> None:
    with pytest.raises(UserError, match="leave --llm out, or use --model embedded"):
        check_choice(ModelChoice(model=str(tiny["smolvlm"]), llm=str(resolve_llm())))


def test_each_tiny_checkpoint_passes_the_checks_as_its_family(tiny: dict[str, Path]) -> None:
    for arch, folder in tiny.items():
        assert check_choice(ModelChoice(model=str(folder))) == folder
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == ARCHITECTURES[arch][1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_devices_and_dtypes_without_a_gpu() -> None:
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(UserError, match=r"--device cuda:1: torch \S+ sees no CUDA device; use --device cpu"):
        resolve_device("cuda:1")
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16


# The hub: the cache, and downloading only when asked


def test_a_hub_id_missing_from_the_cache_names_the_download_command(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    real = huggingface_hub.snapshot_download

    def recording(*args: Any, **kwargs: Any) -> str:
        calls.append(kwargs)
        return str(real(*args, **kwargs))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording)
    with pytest.raises(UserError) as raised:
        check_choice(ModelChoice(model=HUB_ID))
    assert str(raised.value) == (
        f"'{HUB_ID}' is not in the Hugging Face cache ({hub_cache}); add --download to fetch it "
        f"(or `download: true` under model: in the config file), or run `hf download {HUB_ID}` first."
    )
    assert calls and all(call["local_files_only"] for call in calls), "without --download the hub is not asked"


def test_a_hub_id_in_the_cache_loads_from_its_snapshot(hub_cache: Path, tiny: dict[str, Path]) -> None:
    snapshot = cache_as_hub(hub_cache, HUB_ID, tiny["qwen2.5-vl"])
    assert check_choice(ModelChoice(model=HUB_ID)) == snapshot
    adapter = load_adapter(ModelChoice(model=HUB_ID, device="cpu"))
    assert isinstance(adapter, VisionLanguageAdapter) and adapter.name == HUB_ID


def test_download_asks_the_hub_only_when_told_and_lifts_offline_mode_for_that_call(
    hub_cache: Path, tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bool, bool]] = []

    def fake_download(repo_id: str, cache_dir: str, local_files_only: bool = False) -> str:
        calls.append((local_files_only, constants.HF_HUB_OFFLINE))
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        return str(cache_as_hub(Path(cache_dir), repo_id, tiny["smolvlm"]))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = check_choice(ModelChoice(model=HUB_ID, download=True))
    assert folder is not None and (folder / "config.json").is_file()
    assert calls == [(True, True), (False, False)], "the cache first, then one download with the hub online"
    assert constants.HF_HUB_OFFLINE is True, "offline again after the download"


def test_a_failed_download_is_one_sentence(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(repo_id: str, cache_dir: str, local_files_only: bool = False) -> str:
        raise LocalEntryNotFoundError("Cannot reach the Hub.\nMore detail.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(UserError, match=r"^Could not download 'tiny-org/tiny-vlm' from the Hugging Face Hub \("):
        check_choice(ModelChoice(model=HUB_ID, download=True))


def test_download_respects_a_users_own_offline_setting(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streamer.llm.USER_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set; unset it and run again"):
        check_choice(ModelChoice(model=HUB_ID, download=True))


# The commands


def test_replay_refuses_a_bad_model_before_loading_anything(
    bikes_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"id": "q", "t": 2, "question": "What is shown?"}\n')
    out = tmp_path / "r.jsonl"
    args = ["replay", str(bikes_clip), "--questions", str(questions), "--out", str(out), "--model", "nope/missing"]
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("streamer: error: 'nope/missing' is not in the Hugging Face cache")
    assert not out.exists()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_replay_runs_a_tiny_vlm_from_its_folder(
    arch: str, tiny: dict[str, Path], bikes_clip: Path, tmp_path: Path
) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        '{"id": "open", "t": 4, "question": "What is in the video?"}\n'
        '{"id": "mc", "t": 9, "question": "What is shown?", "options": ["a bike", "a cat"], "answer": "A"}\n'
    )
    out = tmp_path / "r.jsonl"
    budget = 320
    files = ["--questions", str(questions), "--out", str(out)]
    options = ["--device", "cpu", "--budget", str(budget), "--max-new-tokens", "6", "--quiet"]
    assert main(["replay", str(bikes_clip), *files, "--model", str(tiny[arch]), *options]) == 0
    *answers, summary = (json.loads(line) for line in out.read_text().splitlines())
    assert [a["id"] for a in answers] == ["open", "mc"]
    for answer in answers:
        assert answer["answer"].strip() and 0 < answer["ttft_ms"] <= answer["latency_ms"]
        assert answer["evidence"], "the frames an image answer read are its evidence"
        assert all(0.0 <= t0 <= t1 <= answer["t"] for t0, t1 in answer["evidence"])
    assert answers[1]["answer"][:3] in ("A. ", "B. "), "options are answered with one of them"
    assert answers[1]["funnel"] is None, "image frames have no description to trace"
    summary = summary["summary"]
    assert summary["frames_ingested"] == 10
    assert 0 < summary["resident_tokens"] <= summary["budget_tokens"] == budget
    assert summary["ingest_ms_per_frame"]["vision_encoder"] > 0


@pytest.fixture
def tiny_server(request: pytest.FixtureRequest, tiny: dict[str, Path], bikes_clip: Path) -> Iterator[ServerThread]:
    """`streamer serve --source bikes.mp4 --model FOLDER`, set up through serve's own config and loader."""
    source = ["--source", f"bikes={bikes_clip}", "--loop", "--port", "0"]
    args = build_parser().parse_args(["serve", *source, "--model", str(tiny[request.param]), "--device", "cpu"])
    config = serve_config(args)
    assert config.model.name == str(tiny[request.param])
    app = create_app(config, lambda: load_engine(config), open_initial_streams(config))
    server = ServerThread(app, config.server.host).start()
    yield server
    server.stop()


@pytest.mark.parametrize("tiny_server", sorted(ARCHITECTURES), indirect=True)
def test_serve_answers_a_websocket_question_from_a_tiny_vlm(tiny_server: ServerThread) -> None:
    wait_for_frames(tiny_server, 3)
    engine = tiny_server.state.engine
    assert engine is not None and isinstance(engine.adapter, VisionLanguageAdapter)

    async def question() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            ws = await connect(session, ws_url(tiny_server))
            return await ask(ws, "q", "What is in the video?")

    messages = asyncio.run(question())
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "answer.started" and kinds[-1] == "answer.done" and "answer.delta" in kinds, kinds
    done = messages[-1]
    assert done["text"].strip() and 0 < done["ttft_ms"] <= done["latency_ms"]
    assert done["evidence"] and done["evidence"][-1][1] <= done["as_of"]
    memory = engine.memory("bikes")
    assert 0 < memory.resident_tokens <= memory.budget_tokens


def test_the_config_file_takes_a_model_folder_alone_or_with_settings(tiny: dict[str, Path]) -> None:
    folder = str(tiny["smolvlm"])
    assert build_config({"model": folder}, "f").model.choice() == ModelChoice(model=folder)
    settings = {"name": folder, "device": "cpu", "dtype": "float32", "download": True}
    assert build_config({"model": settings}, "f").model.choice() == ModelChoice(folder, None, "cpu", "float32", True)
    with pytest.raises(UserError, match=r"model\.device"):
        build_config({"model": {"name": folder, "device": "tpu"}}, "f")


def test_eval_compares_each_model_and_the_embedded_one_once_per_llm(tiny: dict[str, Path]) -> None:
    folder, gguf = str(tiny["smolvlm"]), "/models/other.gguf"
    parse = build_parser().parse_args
    both = eval_models(parse(["eval", "--model", "embedded", folder, "--llm", "default", gguf, "--device", "cpu"]))
    assert both == [
        ModelChoice("embedded", None, "cpu"),
        ModelChoice("embedded", gguf, "cpu"),
        ModelChoice(folder, None, "cpu"),
    ]
    assert eval_models(parse(["eval"])) == [ModelChoice()]
    with pytest.raises(UserError, match="add embedded to --model, or leave --llm out"):
        eval_models(parse(["eval", "--model", folder, "--llm", gguf]))


def test_eval_and_bench_run_a_tiny_vlm(tiny: dict[str, Path], tmp_path: Path, bikes_clip: Path) -> None:
    folder = tiny["qwen2.5-vl"]
    questions = tmp_path / "bikes.jsonl"
    question = {"id": "q", "t": 6, "question": "What is shown?", "options": ["bikes", "cats"], "answer": "A"}
    questions.write_text(json.dumps(question) + "\n")
    suite = tmp_path / "bikes.yaml"
    suite.write_text(f"streams:\n  - {{video: {bikes_clip}, questions: bikes.jsonl}}\n")
    out = tmp_path / "eval"
    argv = ["eval", "--suite", str(suite), "--model", str(folder), "--device", "cpu", "--policies", "fifo"]
    assert main([*argv, "--budgets", "90", "--max-new-tokens", "4", "--out", str(out), "--quiet"]) == 0
    [answer] = json.loads((out / "answers.json").read_text())
    assert answer["config"]["llm"] == folder.name and answer["given"][:3] in ("A. ", "B. ")
    [run] = json.loads((out / "runs.json").read_text())
    assert max(tokens for _, tokens in run["timeline"]) <= run["config"]["budget_tokens"]
    assert run["frame_budget_tokens"] < run["full_tokens"], "frames were evicted under the budget"

    videos = tmp_path / "sb"
    for sample in ("sample_1", "sample_2"):
        (videos / sample).mkdir(parents=True)
        (videos / sample / "video.mp4").symlink_to(bikes_clip)
    rows = FIXTURES / "Real_Time_Visual_Understanding.csv"
    argv = ["bench", "streamingbench", "--file", str(rows), "--videos", str(videos), "--max-videos", "1"]
    argv += ["--model", str(folder), "--device", "cpu", "--max-new-tokens", "4", "--out", str(tmp_path / "b"), "-q"]
    assert main(argv) == 0
    answers = json.loads((tmp_path / "b" / "answers.json").read_text())
    assert answers and all(a["given"] for a in answers)
    assert f"model {folder.name}." in (tmp_path / "b" / "report.md").read_text()
