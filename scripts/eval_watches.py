"""Standing questions on generated event streams: hits, latency, false alarms and duplicate starts.

What runs and how it is scored: `streamer.evaluation.watch_suite`. `--calibrate` runs its grid of settings
on the seeds given (use development seeds); without it the engine's defaults are reported (use other
seeds). `--cost` also times ingest with no watch and with ten, with the real describer.

    python scripts/eval_watches.py --seeds 1 2 --minutes 6 --calibrate
    python scripts/eval_watches.py --seeds 21 22 23 --minutes 6 --cost 60 --out scripts/results/eval_watches.md

`streamer eval --suite watches` runs the report seeds (`--suite watches-dev`: calibration).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from streamer.evaluation.watch_suite import MINUTES, REPORT_SEEDS, evaluate_watches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(REPORT_SEEDS))
    parser.add_argument("--minutes", type=float, default=MINUTES)
    parser.add_argument("--calibrate", action="store_true", help="choose the on threshold on these streams")
    parser.add_argument("--out", type=Path, help="also write the report here (markdown)")
    parser.add_argument("--cost", type=int, default=0, metavar="FRAMES",
                        help="also time ingest of this many frames with 0 and 10 watches (first seed)")  # fmt: skip
    args = parser.parse_args()
    command = "python scripts/eval_watches.py " + shlex.join(sys.argv[1:])
    report = evaluate_watches(
        args.seeds, args.minutes, args.calibrate, args.cost, command, lambda line: print(line, file=sys.stderr)
    )
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
