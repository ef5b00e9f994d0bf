#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Everything that needs a GPU, in one run (a few minutes on one H200): builds the CUDA tests and
# benchmarks for the local GPU's architecture (from nvidia-smi: 90a on Hopper, 80 on A100;
# DEEPMOE_CUDA_ARCHITECTURES overrides) in
# build-gpu/, runs the CUDA tests (each CUDA op against the CPU backend, the model against the
# fixtures), then the benchmarks (MoE layer, MLA),
# and prints their tables. Assumes the CUDA toolkit and the Debian packages of
# scripts/install-deps.sh are present (pass --deps to install the latter first).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == --deps ]]; then
  scripts/install-deps.sh
fi
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
[[ "$cap" == 90 ]] && cap=90a  # Hopper: the architecture-specific target
arch=${DEEPMOE_CUDA_ARCHITECTURES:-${cap:-90a}}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DDEEPMOE_ENABLE_CUDA=ON \
  -DDEEPMOE_CUDA_ARCHITECTURES="$arch" -DDEEPMOE_BUILD_EXAMPLES=OFF >/dev/null
targets=(cuda_moe_test cuda_model_test bench_cuda_moe_layer bench_cuda_mla)
if grep -q '^nccl_test:' <(ninja -C build-gpu -t targets all 2>/dev/null); then
  targets+=(nccl_test)
fi
cmake --build build-gpu -j"$(nproc)" --target "${targets[@]}"
status=0
for t in cuda_moe_test cuda_model_test nccl_test; do
  if [[ -x build-gpu/tests/$t ]]; then
    echo "== $t"
    build-gpu/tests/$t || status=$?
  fi
done
for b in bench_cuda_moe_layer bench_cuda_mla; do
  echo "== $b"
  build-gpu/bench/$b || status=$?
done
exit "$status"
