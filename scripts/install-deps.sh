#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs what deepmoe builds with, from Debian 12's packages, plus any packages named as
# arguments (the main job's training text); does nothing when all are there.
set -euo pipefail
packages=(cmake ninja-build g++ libeigen3-dev catch2 nlohmann-json3-dev libcli11-dev
          clang-14 libclang-rt-14-dev libpcre2-dev pkgconf "$@")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
