"""The engine options the commands share (`--budget`, `--policy`, `--top-k`, ...): added to a parser with
`EngineConfig`'s own defaults, checked, and turned into an `EngineConfig`.

Free of torch, so `streamer --help` and a mistyped option answer in a second.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from memory.settings import COMPRESSION_METHODS, POLICIES
from streamer.engine_config import DEFAULT_FPS, EngineConfig
from streamer.errors import UserError, first_problem
from streamer.models import check_choice, choice_from_args

_DEFAULTS = EngineConfig()


@dataclass(frozen=True)
class EngineOption:
    """One command-line option and the EngineConfig field it sets.

    field: the field's path ("curvature.k" for a nested one); None for an option that is not an engine
    setting (--fps samples the video).
    help: the help text; `{default}` in it is replaced by the option's default.
    """

    flag: str
    field: str | None
    default: Any
    help: str
    type: Callable[[str], Any] = str

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


def _setting(flag: str, field: str, help: str, type: Callable[[str], Any] = str) -> EngineOption:
    """The option for EngineConfig's `field`, with the field's default."""
    default: Any = _DEFAULTS
    for name in field.split("."):
        default = getattr(default, name)
    return EngineOption(flag, field, default, help, type)


ENGINE_OPTIONS: tuple[EngineOption, ...] = (
    EngineOption("--fps", None, DEFAULT_FPS, "frames sampled per second of video (default {default})", float),
    _setting("--budget", "memory.budget_tokens", "KV tokens resident per stream (default {default})", int),
    _setting(
        "--top-k",
        "retrieval.top_k",
        f"frames a question reads by similarity, besides the last {_DEFAULTS.memory.window_seconds:g} s "
        "(default {default}; 0 reads every resident frame)",
        int,
    ),
    _setting("--max-new-tokens", "answer.max_new_tokens", "longest answer in tokens (default {default})", int),
    _setting(
        "--policy",
        "memory.policy",
        f"memory policy: {', '.join(POLICIES)} (default {{default}}; equal: tiers without curvature)",
    ),
    _setting("--k", "memory.curvature.k", "curvature threshold in standard deviations (default {default})", float),
    _setting(
        "--curvature-window",
        "memory.curvature.window",
        "frames the curvature threshold is computed over (default {default})",
        int,
    ),
    _setting(
        "--compression",
        "memory.compression",
        f"KV compression of demoted frames: {' or '.join(COMPRESSION_METHODS)} (default {{default}})",
    ),
    _setting(
        "--answer-from",
        "answer.source",
        "what a question reads for its chosen frames: cache (their KV from ingest) or text (their description "
        "lines again: better for questions about a named time after a long stream); default {default}",
    ),
)
_BY_FLAG = {option.flag: option for option in ENGINE_OPTIONS}
_OPTION_OF_FIELD = {option.field.split(".")[-1]: option.flag for option in ENGINE_OPTIONS if option.field}


def add_engine_options(
    parser: argparse.ArgumentParser, flags: Sequence[str] = tuple(_BY_FLAG), defaults: Mapping[str, Any] | None = None
) -> None:
    """The engine options named by `flags` (all of them by default), in that order, with EngineConfig's defaults.

    defaults: a command's own default for some of them, by flag.
    """
    for flag in flags:
        option = _BY_FLAG[flag]
        default = (defaults or {}).get(flag, option.default)
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        parser.add_argument(flag, type=option.type, default=default, help=option.help.format(default=shown))


def check_options(args: argparse.Namespace) -> None:
    """Refuse a budget, frame rate, top-k or model that cannot work, before anything loads."""
    least = _least("memory.budget_tokens")
    if args.budget < least:
        raise UserError(f"--budget {args.budget} is too small; give at least {least} tokens.")
    if args.fps <= 0:
        raise UserError(f"--fps {args.fps:g} must be positive.")
    if args.top_k < 0:
        raise UserError(f"--top-k {args.top_k} must be 0 or more.")
    check_choice(choice_from_args(args))


def engine_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The EngineConfig settings the parser's engine options set, nested by section (a section or nested
    field the options touch comes with its other fields' defaults)."""
    given = vars(args)
    settings: dict[str, Any] = {}
    for option in ENGINE_OPTIONS:
        if option.field is None or option.dest not in given:
            continue
        *parents, name = option.field.split(".")
        branch, defaults = settings, _DEFAULTS
        for parent in parents:
            defaults = getattr(defaults, parent)
            branch = branch.setdefault(parent, defaults.model_dump())
        branch[name] = given[option.dest]
    answer = settings.get("answer")
    if answer is not None:
        answer["max_new_tokens"] = max(1, answer["max_new_tokens"])  # 0 asks for the shortest answer
    return settings


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The EngineConfig of the parsed options; a UserError naming the option that is wrong."""
    try:
        return EngineConfig.model_validate(engine_settings(args))
    except ValidationError as error:
        raise UserError(config_error(error)) from None


def config_error(error: ValidationError) -> str:
    """One sentence naming the option (or field) that is wrong and what it accepts."""
    problem = first_problem(error)
    field = problem.field.split(".")[-1] or "configuration"
    return f"Invalid {_OPTION_OF_FIELD.get(field, field)}: {problem.message}; fix it and run again."


def _least(path: str) -> int:
    """The smallest value EngineConfig accepts for its field at `path` ("memory.budget_tokens")."""
    section, name = path.split(".")
    model = type(getattr(_DEFAULTS, section))
    return int(next(bound.ge for bound in model.model_fields[name].metadata if hasattr(bound, "ge")))
