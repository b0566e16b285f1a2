#!/usr/bin/env bash
# The lock: every Python package the project installs, pinned exactly, for CPython 3.11 on x86-64
# Linux, resolved by uv from pyproject.toml and scripts/requirements/{torch.txt,wheels.in}; ray.txt adds
# the `ray` extra (serving on Ray), test.txt the `dev` and `ray` extras; gpu.txt is the GPU environment's
# lock (PyPI's CUDA build of torch, faiss-gpu-cu12; from gpu.in).
#   bash scripts/lock.sh              bring the lock in line with pyproject.toml, keeping every pin that
#                                     still fits, then prove it (below)
#   bash scripts/lock.sh --upgrade    move every package to the newest version pyproject.toml allows,
#                                     then prove it
#   bash scripts/lock.sh --upgrade-package NAME   move NAME (and what it needs) only, then prove it
#   bash scripts/lock.sh --check      exit 1, changing nothing, when the lock does not match pyproject.toml
# Proving a new lock: install it into a throw-away environment as scripts/setup.sh does, run the fast
# tests and the demo there with an empty model cache. On failure the new lock stays for inspection;
# `git checkout scripts/requirements` goes back to the old one.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=sync
resolve=()
case "${1:-}" in
    "") ;;
    --check) mode=check ;;
    --upgrade) resolve=(--upgrade) ;;
    --upgrade-package)
        [ -n "${2:-}" ] || { echo "lock: --upgrade-package needs a package name." >&2; exit 2; }
        resolve=(--upgrade-package "$2") ;;
    *) echo "lock: unknown option '$1'; use --check, --upgrade or --upgrade-package NAME." >&2; exit 2 ;;
esac

dir=scripts/requirements
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

uv=$(command -v uv || true)
[ -n "$uv" ] || { [ -x .venv/bin/uv ] && uv=.venv/bin/uv; }
if [ -z "$uv" ]; then
    python3 -m venv "$work/uv" && "$work/uv/bin/python" -m pip install -q --disable-pip-version-check \
        "$(grep '^uv==' "$dir/test.txt")"
    uv=$work/uv/bin/uv
fi

# The CPU build of torch decides torch's own dependencies (PyPI's Linux build adds CUDA libraries).
# Where pip finds it on disk (its find-links), resolve against that; otherwise against PyTorch's CPU index.
torch_source=(--torch-backend cpu)
for links in ${PIP_FIND_LINKS:-} $(python3 -m pip config get global.find-links 2>/dev/null || true); do
    if compgen -G "$links/torch-$(cut -d= -f3 "$dir/torch.txt")+cpu-*.whl" >/dev/null; then
        torch_source=(--find-links "$links")
        break
    fi
done

compile() {  # compile OUTPUT [extra uv arguments]
    local output=$1
    shift
    "$uv" pip compile --quiet pyproject.toml "$dir/torch.txt" "$dir/wheels.in" "$@" \
        --excludes "$dir/excluded.txt" --no-emit-package torch \
        --python-version 3.11 --python-platform x86_64-manylinux_2_28 "${torch_source[@]}" \
        --custom-compile-command "bash scripts/lock.sh" "${resolve[@]}" -o "$output"
}

compile_gpu() {  # compile_gpu OUTPUT: the GPU lock, torch and its CUDA libraries from PyPI included
    "$uv" pip compile --quiet pyproject.toml "$dir/gpu.in" "$dir/wheels.in" \
        --excludes "$dir/excluded.txt" --excludes "$dir/gpu-excluded.txt" \
        --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
        --custom-compile-command "bash scripts/lock.sh" -c "$dir/run.txt" "${resolve[@]}" -o "$1"
}

if [ "$mode" = check ]; then
    # uv keeps the pins of an existing output file where they still fit: a lock that matches
    # pyproject.toml comes back unchanged.
    cp "$dir/run.txt" "$dir/ray.txt" "$dir/test.txt" "$dir/gpu.txt" "$work/"
    compile "$work/run.txt"
    compile "$work/ray.txt" --extra ray -c "$dir/run.txt"
    compile "$work/test.txt" --extra dev --extra ray -c "$dir/run.txt"
    compile_gpu "$work/gpu.txt"
    if ! diff -u "$dir/run.txt" "$work/run.txt" || ! diff -u "$dir/ray.txt" "$work/ray.txt" \
        || ! diff -u "$dir/test.txt" "$work/test.txt" || ! diff -u "$dir/gpu.txt" "$work/gpu.txt"; then
        echo "lock: scripts/requirements/ does not match pyproject.toml (differences above); run \`bash scripts/lock.sh\` and commit the result." >&2
        exit 1
    fi
    echo "lock: scripts/requirements/ matches pyproject.toml"
    exit 0
fi

started=$SECONDS
compile "$dir/run.txt"
compile "$dir/ray.txt" --extra ray -c "$dir/run.txt"
compile "$dir/test.txt" --extra dev --extra ray -c "$dir/run.txt"
compile_gpu "$dir/gpu.txt"
git --no-pager diff --stat -- "$dir" || true
echo "lock: resolved; proving it in a throw-away environment (install, fast tests, demo with an empty cache)"

venv=$work/venv
STREAMER_VENV=$venv bash scripts/setup.sh --test
# The tests that touch every installed library's API the engine uses: vision models, the language
# model, the KV cache, the sources, the command line.
"$venv/bin/python" -m pytest -q -x -m "not slow" tests/test_environment.py tests/test_vision.py \
    tests/test_llm.py tests/test_kv_cache.py tests/test_synthetic.py tests/test_file_source.py tests/test_cli.py
STREAMER_CACHE=$work/cache "$venv/bin/streamer" demo --quiet
echo "lock: the new lock installs, passes the fast tests and runs the demo ($((SECONDS - started)) s); commit scripts/requirements/."
echo "lock: gpu.txt is resolved but not proven here (it needs a GPU): run \`bash scripts/setup.sh --gpu\` and the tests on a GPU machine."
