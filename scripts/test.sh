#!/usr/bin/env bash
# Set up (if needed) with the test tools and the system packages the tests use, check the lock against
# pyproject.toml, then lint, type-check and run the whole test suite. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# System packages (GStreamer RTSP server, ffmpeg, chromium) for the RTSP and browser tests only.
bash scripts/install_system.sh
bash scripts/setup.sh --test
bash scripts/lock.sh --check
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
