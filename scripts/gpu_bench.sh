#!/usr/bin/env bash
# One short run on a GPU machine: the GPU tests and the render benchmark, results in $OUT.
#
# The machine has python3 with CUDA PyTorch but no network: the few wheels the project needs
# beyond its image travel in .whl/ (fetch them here with `pip download --python-version 3.12
# --only-binary=:all: -d .whl av pydantic pydantic-core annotated-types typing-inspection`, and
# for the encode benchmark aiortc aioice pyee pylibsrtp pyopenssl cryptography cffi pycparser
# google-crc32c dnspython ifaddr).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
PY=${PY:-python3}  # the interpreter that holds CUDA PyTorch
EXTRA=/tmp/avatar-extra
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --target "$EXTRA" .whl/*.whl
fi
export PYTHONPATH=$PWD:$EXTRA HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" \
  | tee -a "$OUT/gpu.txt"
$PY -m pytest tests/gpu -q -p no:cacheprovider -o addopts="" 2>&1 | tail -25 | tee "$OUT/gpu-tests.txt"
SESSIONS=${SESSIONS:-1,16,64,128,256}
$PY -m cluster.cli bench render --device cuda --sessions "$SESSIONS" --size 256,512 --json \
  > "$OUT/render-gpu.json" 2> "$OUT/render-gpu.err"
echo "render bench exit $?"
tail -5 "$OUT/render-gpu.err"
head -c 3000 "$OUT/render-gpu.json"
# VP8 encoding on the GPU node's CPU cores: threads against encoder processes (the binding
# resource of a renderer, cluster.webrtc.encoder_processes).
ENCODE_SESSIONS=${ENCODE_SESSIONS:-1,8,16,24,32,48,64}
for SIZE in 512 256; do
  $PY -m cluster.cli bench encode --size "$SIZE" --sessions "$ENCODE_SESSIONS" --seconds 3 \
    --json > "$OUT/encode-$SIZE.json" 2> "$OUT/encode-$SIZE.err"
  echo "encode bench $SIZE px exit $?"
  tail -3 "$OUT/encode-$SIZE.err"
done
