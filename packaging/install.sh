#!/bin/sh
# Install the appliance @APPLIANCE_VERSION@ from this bundle (POSIX sh, no network needed).
#
#   sh install.sh [--prefix DIR] [--trusted-key FILE | --trusted-fingerprint FP]
#                 [--integrity-only] [--replace-kbs] [--python PYTHON]
#
#   --prefix DIR        where to install (default: $HOME/.local/opt/appliance)
#   --trusted-key FILE  the builder's public key (.pub): proves where the bundle comes from
#   --trusted-fingerprint FP   the same, with the key's fingerprint
#   --integrity-only    do not ask to confirm the signer; only integrity is then checked
#   --replace-kbs       replace knowledge bases you changed with the bundle's (yours are backed up)
#   --python PYTHON     the Python @PYTHON_VERSION@ interpreter to use (must have venv)
#
# Nothing is written to the prefix before every file of the bundle matched its MANIFEST and the
# signature over the MANIFEST was checked. The prefix must be new, empty, or an earlier
# installation; a failed install takes back what it wrote. A re-run (or a newer bundle)
# upgrades in place and keeps your knowledge bases and feedback.
set -eu

BUNDLE_PYTHON='@PYTHON_VERSION@'
CPU_FLAGS='@CPU_FLAGS@'

say() { printf 'install: %s\n' "$*"; }
die() {
    printf 'install: REFUSED: %s\n' "$*" >&2
    exit 1
}
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
absolute() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$(pwd)" "$1" ;;
    esac
}

HERE=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd -P)
PREFIX=""
TRUSTED_KEY=""
TRUSTED_FP=""
INTEGRITY_ONLY=0
REPLACE_KBS=0
PY=${APPLIANCE_PYTHON:-}

need_value() { [ "$2" -ge 2 ] || die "$1 needs a value (see: sh install.sh --help)"; }
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) need_value "$1" $#; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --trusted-key) need_value "$1" $#; TRUSTED_KEY=$2; shift 2 ;;
        --trusted-key=*) TRUSTED_KEY=${1#*=}; shift ;;
        --trusted-fingerprint) need_value "$1" $#; TRUSTED_FP=$2; shift 2 ;;
        --trusted-fingerprint=*) TRUSTED_FP=${1#*=}; shift ;;
        --integrity-only) INTEGRITY_ONLY=1; shift ;;
        --replace-kbs) REPLACE_KBS=1; shift ;;
        --python) need_value "$1" $#; PY=$2; shift 2 ;;
        --python=*) PY=${1#*=}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) printf 'install: unknown option %s (see: sh install.sh --help)\n' "$1" >&2; exit 2 ;;
    esac
done

if [ -z "$PREFIX" ]; then
    [ -n "${HOME:-}" ] || die "HOME is not set; pass --prefix DIR"
    PREFIX=$HOME/.local/opt/appliance
fi
PREFIX=$(absolute "$PREFIX")
if [ -n "$TRUSTED_KEY" ]; then
    TRUSTED_KEY=$(absolute "$TRUSTED_KEY")
    [ -r "$TRUSTED_KEY" ] || die "cannot read the trusted key $TRUSTED_KEY; check the path"
fi

# --- 1. the machine ----------------------------------------------------------------------------
if [ "$(uname -s)" != Linux ] || [ "$(uname -m)" != x86_64 ]; then
    die "this bundle is for Linux on x86-64, and this is $(uname -s) on $(uname -m)"
fi
cpu=$(sed -n '/^flags/{p;q;}' /proc/cpuinfo 2>/dev/null || true)
cpu=" ${cpu#*:} "
missing=""
for flag in $CPU_FLAGS; do
    case $cpu in
        *" $flag "*) ;;
        *) missing="$missing $flag" ;;
    esac
done
[ -z "$missing" ] || die "this CPU lacks$missing, which the bundled llama.cpp needs (x86-64 with AVX2 and FMA: Intel Haswell or AMD Excavator, 2013, or newer); install on another machine"
say "CPU has $CPU_FLAGS"

pyver() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true; }
if [ -n "$PY" ]; then
    [ "$(pyver "$PY")" = "$BUNDLE_PYTHON" ] ||
        die "$PY is not Python $BUNDLE_PYTHON, which this bundle was built for; give another --python, or rebuild the bundle with --python-version"
else
    for cand in "python$BUNDLE_PYTHON" python3; do
        if command -v "$cand" >/dev/null 2>&1 && [ "$(pyver "$cand")" = "$BUNDLE_PYTHON" ]; then
            PY=$(command -v "$cand")
            break
        fi
    done
    [ -n "$PY" ] || die "Python $BUNDLE_PYTHON was not found; install it with its venv module, pass --python PATH, or rebuild the bundle with --python-version for the Python this machine has"
fi
"$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 ||
    die "$PY lacks the venv module; install it (Debian/Ubuntu: apt install python$BUNDLE_PYTHON-venv) and re-run"
say "using $PY"

# --- 2. the prefix, integrity and origin, before anything is placed --------------------------------------------
# the prefix: new, empty or an earlier installation, with nothing of the user's in the way
"$PY" -I -B -S "$HERE/tools/verify.py" --prefix "$PREFIX" || exit 1
say "checking every file of $HERE against its MANIFEST, and the signature ..."
set -- "$HERE"
if [ -n "$TRUSTED_KEY" ]; then set -- "$@" --trusted-key "$TRUSTED_KEY"; fi
if [ -n "$TRUSTED_FP" ]; then set -- "$@" --trusted-fingerprint "$TRUSTED_FP"; fi
if [ "$INTEGRITY_ONLY" -eq 1 ]; then set -- "$@" --integrity-only; fi
# -I -S: ignore PYTHON* variables and every site-packages (the signature check loads
# cryptography from the bundle's own, just verified, wheels); -B: write nothing to the stick.
"$PY" -I -B -S "$HERE/tools/verify.py" "$@" || die "the bundle failed its check; nothing was installed and $PREFIX was not touched"

# --- 3. the environment ------------------------------------------------------------------------
REL=""
DONE=0
NEW_PREFIX=0
NEW_RELEASES=0
[ -e "$PREFIX" ] || NEW_PREFIX=1
[ -e "$PREFIX/releases" ] || NEW_RELEASES=1
cleanup() {
    if [ "$DONE" -eq 0 ]; then
        if [ -n "$REL" ]; then rm -rf "$REL"; fi
        # only folders this run made, and only when empty again
        if [ "$NEW_RELEASES" -eq 1 ]; then rmdir "$PREFIX/releases" 2>/dev/null || true; fi
        if [ "$NEW_PREFIX" -eq 1 ]; then rmdir "$PREFIX" 2>/dev/null || true; fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$PREFIX/releases" || die "cannot create $PREFIX; choose another --prefix"
REL=$PREFIX/releases/$(date -u +%Y%m%d-%H%M%S)-$$
say "creating the Python environment in $REL/venv"
"$PY" -I -m venv "$REL/venv" || die "python -m venv failed; check free space at $PREFIX"
nwheels=$(grep -c -- '--hash=' "$HERE/requirements.txt")
say "installing $nwheels wheels from the bundle (no network)"
PIP_CONFIG_FILE=/dev/null "$REL/venv/bin/python" -I -m pip --isolated install -q --no-index \
    --find-links "$HERE/wheels" --require-hashes --only-binary=:all: --no-cache-dir \
    --disable-pip-version-check --no-warn-script-location -r "$HERE/requirements.txt" ||
    die "pip could not install the bundle's wheels (see above); $PREFIX keeps its previous installation"

# --- 4. models, knowledge bases, wrapper, doctor, switch ------------------------------------------
set -- --bundle "$HERE" --prefix "$PREFIX" --release "$REL"
if [ "$REPLACE_KBS" -eq 1 ]; then set -- "$@" --replace-kbs; fi
"$REL/venv/bin/python" -I -B -m appliance.bundle.install "$@" || exit 1
DONE=1
