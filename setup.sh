#!/usr/bin/env bash
# One-command set-up: a virtualenv in .venv with dssn-jax and its test
# dependencies, plus Debian's Fashion-MNIST files (the only real dataset that
# can be installed offline). Safe to rerun. Every Python package is installed
# at the version in constraints.txt (README, "A reproducible environment").
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
# torch only serves the converter of the authors' checkpoints and its tests;
# its version comes from constraints.txt, since an unpinned torch resolves
# to a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet -c constraints.txt torch
# .venv-aot: the TPU compiler (libtpu) and the CUDA PJRT plugin (about 1.2
# GB, half a minute), over .venv's packages, for the tests and the benchmark
# that compile for accelerators (docs/accelerators.md). Apart from .venv
# because both probe for chips and log at start-up in every process.
if [ ! -x .venv-aot/bin/python ]; then
  .venv/bin/python -m venv .venv-aot
fi
# .venv's packages (dssn-jax included) are seen from .venv-aot.
PURELIB='import sysconfig; print(sysconfig.get_paths()["purelib"])'
echo "import site; site.addsitedir('$(.venv/bin/python -c "$PURELIB")')" \
  > "$(.venv-aot/bin/python -c "$PURELIB")/dssn_jax_venv.pth"
.venv-aot/bin/python -m pip install --quiet --no-deps -c constraints-aot.txt \
  libtpu jax-cuda12-plugin jax-cuda12-pjrt
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
echo "dssn-jax is set up: .venv/bin/python -m pytest -q runs the tests."
