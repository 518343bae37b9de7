#!/usr/bin/env bash
# Set up everything napari-recist-seg needs on a Debian/Ubuntu machine: the system libraries
# for headless napari (Xvfb, Mesa OpenGL, Qt's xcb plugin), a virtual environment in .venv,
# PyTorch, and the package with its test extra. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  xvfb xauth libgl1 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxkbcommon0
  libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
  libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxcb-xkb1
  libdbus-1-3 libfontconfig1 libglib2.0-0
)

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "== installing system packages: ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "== installing PyTorch (large: a few minutes)"
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
echo "== installing napari-recist-seg and its test tools"
.venv/bin/python -m pip install -q -e ".[test]"
echo "== ready: .venv/bin/recist-seg --help"
