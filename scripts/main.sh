#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The main job, for now: builds examples/moe_layer and runs one DeepSeek-V3-family MoE layer
# (Moonlight-16B-A3B by default; pass other options through, e.g. --config deepseek-v3).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"${JOBS:-$(nproc)}" --target moe_layer
build/examples/moe_layer "$@"
