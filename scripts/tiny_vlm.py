"""Write a tiny random VLM checkpoint folder that `streamer --model FOLDER` loads like a real one.

    python scripts/tiny_vlm.py OUT_FOLDER --arch llava-onevision|smolvlm|qwen2.5-vl

Two layers, random weights, the packaged SmolLM2 tokenizer with the family's vision tokens: answers are
gibberish, but every command runs on it as on a downloaded checkpoint, so it smoke-tests an install
(a GPU one included) in seconds: `streamer replay clip.mp4 --questions q.jsonl --out r.jsonl --model OUT_FOLDER`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamer.adapters.tiny import ARCHITECTURES, save_tiny_vlm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the checkpoint into (made if missing)")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="llava-onevision", help="model family")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"{args.out} is a file; give a folder to write the checkpoint into")
    folder = save_tiny_vlm(args.out, args.arch)
    print(f"Wrote a tiny random {args.arch} checkpoint to {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
