"""`streamer eval` (a suite over configurations, with a report and plots) and `streamer bench` (a
benchmark's own files, scored by its rule).

Both check every input (options, suite file, benchmark file, videos) before a model loads, so a
mistake costs a second and is reported in one sentence.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from memory.settings import POLICIES
from streamer.engine_config import DEFAULT_FPS
from streamer.errors import UserError
from streamer.models import EMBEDDED, ModelChoice, add_model_options, add_placement_options, choice_from_args
from streamer.options import add_engine_options, check_options, engine_config

if TYPE_CHECKING:
    from streamer.evaluation.options import Variant

EVALUATION_COMMANDS = ("eval", "bench")


def add_evaluation_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from streamer.evaluation.options import DEFAULT_BUDGETS, DEFAULT_POLICIES, EVAL_MAX_NEW_TOKENS

    evaluate = commands.add_parser(
        "eval",
        help="run a needle suite over memory policies, budgets, fps and models; write a report with plots",
        description="Replays every stream of the suite under every configuration and writes report.md, "
        "answers.json, runs.json and PNG plots into --out.",
    )
    evaluate.add_argument(
        "--suite",
        default="default",
        help="'default' (one 6-minute needle stream), 'delayed' (three 20-minute streams, questions 2-20 minutes "
        "after their needles; 'delayed-dev' is the same on the development seeds), 'watches' (standing questions "
        "on three 6-minute event streams: hits, latency, false alarms; 'watches-dev' calibrates their settings on "
        "the development seeds) or a suite YAML file",
    )
    evaluate.add_argument(
        "--policies",
        nargs="+",
        metavar="POLICY",
        help=f"memory policies to compare, of {', '.join(POLICIES)} (default: {' '.join(DEFAULT_POLICIES)})",
    )
    evaluate.add_argument(
        "--budgets",
        nargs="+",
        type=float,
        metavar="PERCENT",
        help="token budgets as percent of each stream's full token count (default: "
        + " ".join(f"{budget:g}" for budget in DEFAULT_BUDGETS)
        + ")",
    )
    evaluate.add_argument(
        "--fps",
        nargs="+",
        type=float,
        default=[DEFAULT_FPS],
        help=f"frames sampled per second of video (default {DEFAULT_FPS:g})",
    )
    evaluate.add_argument(
        "--model",
        nargs="+",
        help="models to compare: embedded (the default: the CPU describer with each --llm), vision-language "
        "checkpoint folders or Hugging Face model ids from the local cache",
    )
    evaluate.add_argument(
        "--llm",
        nargs="+",
        help="the embedded stack's language models: 'default' (SmolLM2-135M, the default) or local Hugging Face "
        "folders / .gguf files",
    )
    add_placement_options(evaluate)
    evaluate.add_argument(
        "--minutes", nargs="+", type=float, default=[], help="length of the suite's generated streams (one per value)"
    )
    evaluate.add_argument("--out", type=Path, default=Path("eval-report"), help="output folder (default eval-report)")
    evaluate.add_argument(
        "--via-websocket",
        action="store_true",
        help="replay through a websocket server as a live client (real time; measures client TTFT and latency)",
    )
    evaluate.add_argument(
        "--url", help="with --via-websocket: a running server (ws://host:port/ws) instead of one started here"
    )
    evaluate.add_argument("--token", help="the --url server's token (default: $STREAMER_TOKEN)")
    add_engine_options(evaluate, ("--top-k", "--max-new-tokens"), {"--max-new-tokens": EVAL_MAX_NEW_TOKENS})
    evaluate.add_argument(
        "--host-budget", type=int, default=0, help="host-memory tokens behind the device budget (default 0: none)"
    )
    evaluate.add_argument(
        "--variant",
        nargs="+",
        action="append",
        metavar="NAME [KEY=VALUE ...]",
        help="engine settings to compare, side by side on the same described frames: a name and EngineConfig "
        "fields, e.g. --variant cache answer_from=cache --variant no-bm25 lexical_weight=0 (repeatable; "
        "default: one variant, the engine's defaults)",
    )
    evaluate.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    bench = commands.add_parser(
        "bench",
        help="run a streaming benchmark's own files (StreamingBench, OVO-Bench, RVS) and score them by its rule",
        description="Replays every video of the benchmark file and writes report.md, answers.json and report.json.",
    )
    bench.add_argument("benchmark", help="streamingbench, ovobench or rvs")
    bench.add_argument("--file", type=Path, required=True, help="the benchmark's question file (CSV or JSON)")
    bench.add_argument("--videos", type=Path, required=True, help="the folder its video paths are relative to")
    bench.add_argument(
        "--context", default="all", help="all (default) or last60: StreamingBench's 60 s before each question"
    )
    add_engine_options(bench, ("--fps", "--budget", "--policy", "--top-k", "--max-new-tokens"))
    add_model_options(bench)
    bench.add_argument("--judge", default="local", help="RVS judge: local (a local LM, default) or overlap")
    bench.add_argument("--judge-llm", help="the local judge's model folder or .gguf (default: SmolLM2-135M)")
    bench.add_argument("--max-videos", type=int, help="replay only the first N videos of the file")
    bench.add_argument(
        "--forward",
        default="watches",
        help="OVO-Bench forward active responding: answered by standing questions (watches, default) or asked",
    )
    bench.add_argument("--out", type=Path, default=Path("bench-report"), help="output folder (default bench-report)")
    bench.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    bench.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run_evaluation_command(args: argparse.Namespace, command: str) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads} must be at least 1.")
        import torch

        torch.set_num_threads(args.threads)
    if args.command == "eval":
        return run_eval(args, command)
    return run_bench(args, command)


def _log(quiet: bool) -> Callable[[str], None]:
    def log(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return log


def parse_variants(given: list[list[str]] | None) -> list[Variant]:
    """`--variant NAME KEY=VALUE ...` options as Variants (values read as YAML scalars: 0, false, text)."""
    import yaml

    from streamer.evaluation.options import Variant

    if not given:
        return [Variant()]
    variants = []
    for name, *pairs in given:
        if "=" in name:
            raise UserError(f"--variant {name}: give the variant a name first, then KEY=VALUE settings.")
        settings = []
        for pair in pairs:
            key, equals, value = pair.partition("=")
            if not equals or not key:
                raise UserError(f"--variant {name}: '{pair}' is not KEY=VALUE.")
            settings.append((key, yaml.safe_load(value)))
        variants.append(Variant(name, tuple(settings)))
    names = [variant.name for variant in variants]
    if len(set(names)) < len(names):
        raise UserError("--variant names must differ; name each variant once.")
    return variants


def run_eval(args: argparse.Namespace, command: str) -> int:
    import os

    from streamer.evaluation.evaluate import check_options as check_eval_options
    from streamer.evaluation.evaluate import run_suite
    from streamer.evaluation.options import DEFAULT_BUDGETS, DEFAULT_POLICIES, EvalOptions
    from streamer.evaluation.progress import Progress
    from streamer.evaluation.report import write_report
    from streamer.evaluation.suite import named_spec, prepare_suite, read_suite_file, with_minutes
    from streamer.llm import cache_dir

    if args.suite in WATCH_SUITES:
        return run_watch_suite(args, command)
    if args.url is not None and (args.policies or args.budgets or args.llm or args.model):
        raise UserError(
            "A running server keeps its own memory policy, budget and model; leave out --policies, --budgets, "
            "--model and --llm with --url."
        )
    options = EvalOptions(
        policies=list(dict.fromkeys(args.policies or DEFAULT_POLICIES)),
        budgets=sorted(set(args.budgets or DEFAULT_BUDGETS)),
        fps=sorted(set(args.fps)),
        models=eval_models(args),
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        host_budget_tokens=args.host_budget,
        via_websocket=args.via_websocket,
        url=args.url,
        token=args.token or os.environ.get("STREAMER_TOKEN"),
        variants=parse_variants(args.variant),
    )
    check_eval_options(options)
    if args.host_budget < 0:
        raise UserError(f"--host-budget {args.host_budget} must be 0 or more tokens.")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens} must be at least 1.")
    _check_out(args.out)
    log = _log(args.quiet)
    spec = named_spec(args.suite) or read_suite_file(Path(args.suite))
    suite = prepare_suite(with_minutes(spec, args.minutes), args.suite, cache_dir() / "eval-suites", log)
    progress = Progress(enabled=not args.quiet)
    result = run_suite(suite, options, progress, log)
    progress.close()
    report = write_report(args.out, suite, options, result, command)
    log(f"Wrote {report} ({len(result.answers)} answers in {result.seconds['total']:.0f} s)")
    if not args.quiet:
        print(report.read_text(encoding="utf-8").split("## Time to first token")[0].rstrip())
    return 0


WATCH_SUITES = ("watches", "watches-dev")


def run_watch_suite(args: argparse.Namespace, command: str) -> int:
    """`--suite watches` / `watches-dev`: the standing-question evaluation, report.md in --out."""
    from streamer.evaluation.watch_suite import DEV_SEEDS, MINUTES, REPORT_SEEDS, evaluate_watches

    given = [option for option, value in (
        ("--policies", args.policies), ("--budgets", args.budgets), ("--model", args.model), ("--llm", args.llm),
        ("--via-websocket", args.via_websocket), ("--url", args.url), ("--variant", args.variant),
    ) if value]  # fmt: skip
    if given:
        raise UserError(
            f"--suite {args.suite} runs the embedded stack with the engine's defaults at 1 fps; leave out "
            f"{', '.join(given)}."
        )
    if len(args.minutes) > 1:
        raise UserError(f"--suite {args.suite} takes one --minutes value, got {len(args.minutes)}.")
    _check_out(args.out)
    calibrate = args.suite == "watches-dev"
    report = evaluate_watches(
        DEV_SEEDS if calibrate else REPORT_SEEDS,
        args.minutes[0] if args.minutes else MINUTES,
        calibrate=calibrate,
        command=command,
        log=_log(args.quiet),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "report.md"
    path.write_text(report, encoding="utf-8")
    _log(args.quiet)(f"Wrote {path}")
    if not args.quiet:
        print(report.rstrip())
    return 0


def eval_models(args: argparse.Namespace) -> list[ModelChoice]:
    """The models `streamer eval` compares: each --model, the embedded one once per --llm."""
    llms = [None if llm == "default" else llm for llm in args.llm or ["default"]]
    if args.llm and args.model and EMBEDDED not in args.model:
        raise UserError(
            "--llm names the embedded stack's language models; add embedded to --model, or leave --llm out."
        )
    models: list[ModelChoice] = []
    for model in args.model or [EMBEDDED]:
        if model == EMBEDDED:
            models += [ModelChoice(EMBEDDED, llm, args.device, args.dtype) for llm in llms]
        else:
            models.append(ModelChoice(model, None, args.device, args.dtype, args.download))
    return list(dict.fromkeys(models))


def run_bench(args: argparse.Namespace, command: str) -> int:
    from streamer.evaluation.bench import BenchOptions
    from streamer.evaluation.bench import run_bench as run
    from streamer.evaluation.progress import Progress

    if args.policy not in POLICIES:
        raise UserError(f"Unknown policy '{args.policy}'; use one of {', '.join(POLICIES)}.")
    check_options(args)
    if args.max_videos is not None and args.max_videos < 1:
        raise UserError(f"--max-videos {args.max_videos} must be at least 1.")
    if args.judge_llm is not None:
        from streamer.llm import check_llm_path

        check_llm_path(args.judge_llm)
    _check_out(args.out)
    options = BenchOptions(
        benchmark=args.benchmark,
        file=args.file,
        videos=args.videos,
        context=args.context,
        fps=args.fps,
        engine=engine_config(args),
        model=choice_from_args(args),
        judge=args.judge,
        judge_llm=args.judge_llm,
        max_videos=args.max_videos,
        forward=args.forward,
    )
    log = _log(args.quiet)
    report = run(options, args.out, command, Progress(enabled=not args.quiet), log)
    log(f"Wrote {report}")
    if not args.quiet:
        print(report.read_text(encoding="utf-8"))
    return 0


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; give a folder for the report.")
