"""Evaluation suites: which streams to replay, and the questions asked along each.

A suite is a YAML file:

```yaml
name: lobby-and-needles                 # optional (default: the file's name); the report's title
streams:
  - generate: {minutes: 10, seed: 0}    # a needle stream from packaged footage (streamer.evaluation.needles)
  - generate: {minutes: 30, seed: 1, spacing_s: 60, shown_s: 4, choice_share: 0.5}
  - video: clips/lobby.mp4              # your own video (relative to this file) and its questions,
    questions: clips/lobby.jsonl        # in the `streamer replay` format
```

The default suite is one generated stream of six minutes (seed 0, a needle every 30 s: 11
needles, 12 questions). Generated streams are rendered once into the cache folder and reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sources.file import FileSource
from streamer.errors import UserError, read_yaml_file
from streamer.replay import ReplayQuestion, check_question_times, load_questions

DEFAULT_MINUTES = 6.0
DEFAULT_SPACING_S = 30.0


class GenerateSpec(BaseModel):
    """A needle stream planned by `streamer.evaluation.needles.plan_suite` (seconds unless the name says otherwise)."""

    model_config = ConfigDict(extra="forbid")

    minutes: float = Field(DEFAULT_MINUTES, gt=0, le=240)
    seed: int = Field(0, ge=0)
    spacing_s: float = Field(DEFAULT_SPACING_S, gt=0)
    shown_s: float = Field(4.0, gt=0)
    choice_share: float = Field(0.5, ge=0, le=1)
    min_delay_s: float = Field(2.0, gt=0, description="shortest time from a needle to a question about it")
    max_delay_s: float = Field(float("inf"), gt=0, description="longest time from a needle to a question about it")


class StreamSpec(BaseModel):
    """Either `generate`, or `video` with its `questions`."""

    model_config = ConfigDict(extra="forbid")

    generate: GenerateSpec | None = None
    video: Path | None = None
    questions: Path | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> StreamSpec:
        if self.generate is not None and (self.video is not None or self.questions is not None):
            raise ValueError("give either generate, or video and questions, not both")
        if self.generate is None and (self.video is None or self.questions is None):
            raise ValueError("give generate, or both video and questions")
        return self


class SuiteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    streams: list[StreamSpec] = Field(min_length=1)


@dataclass(frozen=True)
class SuiteStream:
    """A stream ready to replay: its video, its questions (sorted by time) and how long it is."""

    name: str
    video: Path
    questions: tuple[ReplayQuestion, ...]
    duration: float


@dataclass(frozen=True)
class Suite:
    name: str
    streams: tuple[SuiteStream, ...]
    source: str  # "default" or the suite file's path


# The suites `--suite` knows by name. "delayed": 20-minute streams whose questions come 2 to 20 minutes after
# their needles, past the recent window every policy keeps, so what the memory kept decides the answer.
# The answer path was developed on the seeds of "delayed-dev" only; "delayed" (other seeds) is what reports.
DELAYED_DEV_SEEDS = (1, 2)
DELAYED_REPORT_SEEDS = (11, 12, 13)
SUITE_NAMES = ("default", "delayed", "delayed-dev")


def _delayed(seed: int) -> StreamSpec:
    return StreamSpec(generate=GenerateSpec(minutes=20, seed=seed, spacing_s=60, min_delay_s=120, max_delay_s=1200))


def default_spec() -> SuiteSpec:
    return SuiteSpec(name="default", streams=[StreamSpec(generate=GenerateSpec())])


def named_spec(name: str) -> SuiteSpec | None:
    """The built-in suite called `name` (one of SUITE_NAMES), or None."""
    if name == "default":
        return default_spec()
    if name == "delayed":
        return SuiteSpec(name=name, streams=[_delayed(seed) for seed in DELAYED_REPORT_SEEDS])
    if name == "delayed-dev":
        return SuiteSpec(name=name, streams=[_delayed(seed) for seed in DELAYED_DEV_SEEDS])
    return None


def read_suite_file(path: Path) -> SuiteSpec:
    """The suite in a YAML file; a UserError naming the file and the field when it is not one."""
    raw: Any = read_yaml_file(path, "Suite file", "check the path or use --suite default")
    if not isinstance(raw, dict):
        raise UserError(f"Suite file '{path}' must be a mapping with a 'streams' list; see `streamer eval --help`.")
    try:
        spec = SuiteSpec.model_validate(raw)
    except ValidationError as error:
        raise UserError(_sentence(error, f"Suite file '{path}'")) from None
    base = path.parent
    for stream in spec.streams:
        if stream.video is not None and not stream.video.is_absolute():
            stream.video = base / stream.video
        if stream.questions is not None and not stream.questions.is_absolute():
            stream.questions = base / stream.questions
    return spec


def with_minutes(spec: SuiteSpec, minutes: list[float]) -> SuiteSpec:
    """Every generated stream of `spec` once per length in `minutes` (an empty list changes nothing)."""
    if not minutes:
        return spec
    for value in minutes:
        if not 0 < value <= 240:
            raise UserError(f"--minutes {value:g} is not a stream length; give minutes between 0 and 240.")
    streams: list[StreamSpec] = []
    for stream in spec.streams:
        if stream.generate is None:
            streams.append(stream)
            continue
        generate = stream.generate
        streams += [StreamSpec(generate=generate.model_copy(update={"minutes": value})) for value in minutes]
    return spec.model_copy(update={"streams": streams})


def prepare_suite(spec: SuiteSpec, source: str, cache: Path, log: Any = None) -> Suite:
    """Render the generated streams (reused when already built) and check every video and question
    file, so a mistake is reported before any model loads."""
    from streamer.evaluation.needles import build_suite

    prepared: list[SuiteStream] = []
    for number, stream in enumerate(spec.streams):
        if stream.generate is not None:
            g = stream.generate
            if log is not None:
                log(f"Preparing a {g.minutes:g} min needle stream (seed {g.seed}; rendered once, then reused)...")
            built = build_suite(
                cache,
                g.minutes * 60,
                g.seed,
                spacing_s=g.spacing_s,
                shown_s=g.shown_s,
                choice_share=g.choice_share,
                min_delay_s=g.min_delay_s,
                max_delay_s=g.max_delay_s,
            )
            name = f"needles {g.minutes:g} min seed {g.seed}"
            prepared.append(_checked(name, built.video, built.questions_path, number))
        else:
            assert stream.video is not None and stream.questions is not None
            prepared.append(_checked(stream.video.name, stream.video, stream.questions, number))
    names = [stream.name for stream in prepared]
    unique = [name if names.count(name) == 1 else f"{name} #{i}" for i, name in enumerate(names)]
    streams = tuple(SuiteStream(n, s.video, s.questions, s.duration) for n, s in zip(unique, prepared, strict=True))
    return Suite(spec.name or Path(source).stem, streams, source)


def _checked(name: str, video: Path, questions_path: Path, number: int) -> SuiteStream:
    if not video.is_file():
        raise UserError(f"Stream {number} of the suite: the video '{video}' does not exist; check the path.")
    questions = load_questions(questions_path)
    source = FileSource(video, fps=1.0)
    try:
        check_question_times(questions, source)
        duration = source.duration
    finally:
        source.close()
    return SuiteStream(name, video, tuple(questions), duration)


def _sentence(error: ValidationError, where: str) -> str:
    first = error.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{where}: '{field}' is not a suite setting; use name and streams (generate, or video and questions)."
    message = str(first["msg"]).removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    return f"{where}: {field}: {message}." if field else f"{where}: {message}."
