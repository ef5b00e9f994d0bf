#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The main job, until training exists: builds the examples and runs the most complete one,
# examples/forward — a DeepSeek-V3-style checkpoint (tests/fixtures/model/v3, made with Hugging
# Face transformers) loaded from safetensors, the logits of two sequences and their top-5 next
# tokens — then one Moonlight-sized MoE layer (examples/moe_layer). Arguments go to forward,
# e.g. scripts/main.sh --model /path/to/checkpoint --tokens 0,1,2
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"${JOBS:-$(nproc)}" --target forward moe_layer
if [[ $# -gt 0 ]]; then
  exec build/examples/forward "$@"
fi
build/examples/forward --model tests/fixtures/model/v3 \
  --tokens 154,23,229,217,134,233,15 --tokens 4,146,73,148,187
echo
build/examples/moe_layer --tokens 256
