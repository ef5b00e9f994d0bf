#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The main job: trains a small DeepSeek-V3-architecture model (configs/train_small.json: 4
# layers, 16 routed experts top-2 + 1 shared, MLA, an MTP module, aux-loss-free balancing;
# 6.0 M parameters, byte-level tokens) on two sources of real text that Debian installs —
# Python's standard library (code) and the fortune-cookie collection (prose) — for a few minutes
# on the CPU, then
# generates a sample from it with deepmoe-generate's engine. The run, its metrics and the
# expert-activation report go to runs/main; docs/training.md reports what it reaches. Extra
# arguments go to deepmoe-train and override these (e.g. --steps 100). Without --resume each run
# starts over in a fresh runs/main; with it, an interrupted run continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh libpython3.11-stdlib fortunes
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"${JOBS:-$(nproc)}" --target deepmoe-train deepmoe-generate
if [[ " $* " != *" --resume "* ]]; then
  rm -rf runs/main
fi
exec build/examples/deepmoe-train \
  --source code:1:/usr/lib/python3.11:'*.py' \
  --source prose:1:/usr/share/games/fortunes:'*.u8' \
  --config small --steps 400 --batch 8 --seq-len 256 --warmup 40 \
  --bias-update-speed 0.01 --eval-every 100 --save-every 100 --out runs/main --prompt 'def ' "$@"
