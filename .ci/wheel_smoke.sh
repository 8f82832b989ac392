#!/usr/bin/env bash
# CI: what `pip install nayer-edge` gives a fresh machine. Builds the wheel from a clean copy of the sources,
# installs it (torch pinned by constraints.txt, never unpinned) into a new virtual environment outside the
# checkout, and from a folder with no checkout runs --version, targets, recipes, writes the demo teacher and
# compresses it for cpu-x86 and for jetson (a deploy bundle; the TensorRT check itself runs on the device).
# About 3 minutes on 2 cores of an Intel CPU with AMX (170 s measured at a 60 s budget, pip's cache warm); the budget
# is the demo's own 170 s because an AVX2-only 2-core EPYC, 2.5x slower, refused 60 s ("use at least --time-budget 89")
# and `make demo` at 170 s passed there (100.2 % of the teacher), so about
# 7 minutes. PY picks the Python of the new venv (default
# python3). Where torch==2.13.0 would resolve to a CUDA build, point pip at the CPU wheels first
# (PIP_EXTRA_INDEX_URL, see the README's install section).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-python3}"
BUDGET="${SMOKE_TIME_BUDGET:-170}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH  # nothing of the checkout may be importable
export NAYER_EDGE_CACHE="$WORK/cache"  # a fresh cache: the teacher is trained, the text embeddings computed
export COLUMNS="${COLUMNS:-160}"  # rich's tables in a log, not squeezed to 80 columns
started=$SECONDS
step() { echo "wheel smoke [$((SECONDS - started)) s]: $*"; }

step "build the wheel"
mkdir "$WORK/src"
# A copy of what the wheel is made of (the package and the data-files' folders): a stale build/ of the checkout
# can not leak into it.
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md nayer_edge recipes export \
  | tar -C "$WORK/src" -xf -
"$PY" -m venv "$WORK/venv"
VENV_PY="$WORK/venv/bin/python"
"$VENV_PY" -m pip install -q --upgrade pip
"$VENV_PY" -m pip wheel -q --no-deps -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/nayer_edge-*.whl)"
VERSION="$(basename "$WHEEL" | cut -d- -f2)"

step "install $(basename "$WHEEL") into a fresh venv"
"$VENV_PY" -m pip install -q -c "$REPO/constraints.txt" "$WHEEL"

cd "$WORK"  # no checkout here, nor above
NE="$WORK/venv/bin/nayer-edge"
where="$("$VENV_PY" -c 'import nayer_edge; print(nayer_edge.__file__)')"
case "$where" in "$WORK/venv/"*) ;; *) echo "wheel smoke: nayer_edge imported from $where, not the venv" >&2; exit 1;; esac

step "nayer-edge --version, targets, recipes"
said="$("$NE" --version)"
echo "$said"
test "$said" = "nayer-edge $VERSION"
"$NE" targets
"$NE" recipes | grep -q demo-digits

step "the demo teacher"
"$NE" demo --teacher-only teacher
test -f teacher/digits_teacher.pt -a -f teacher/digits_teacher.pt.json -a -f teacher/digits_heldout.npz

for target in cpu-x86 jetson; do
  step "compress for $target (--time-budget $BUDGET)"
  "$NE" compress teacher/digits_teacher.pt --recipe demo-digits --target "$target" --time-budget "$BUDGET" \
    --eval-data teacher/digits_heldout.npz --out "runs/$target"
  test -f "runs/$target/metrics.json" -a -f "runs/$target/report.md"
done
test -f runs/jetson/bundle.tar.gz -a -f runs/jetson/bundle/manifest.json
"$NE" verify runs/jetson/bundle
step "passed"
