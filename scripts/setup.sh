#!/usr/bin/env bash
# Installs tvm_patch and everything it needs into the current Python environment, plus the
# Cortex-M7 toolchain and emulator from Debian packages when they are missing:
# arm-none-eabi-gcc with newlib (firmware), qemu-system-arm (emulator), gcc and make
# (firmware builds and the emulator's instruction-counting plugin).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
if ! command -v arm-none-eabi-gcc >/dev/null ||
   [ ! -f "$(arm-none-eabi-gcc -print-file-name=libc_nano.a)" ]; then
  need+=(gcc-arm-none-eabi libnewlib-arm-none-eabi)
fi
command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v make >/dev/null || need+=(make)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
python3 -m pip install --upgrade pip >/dev/null
python3 -m pip install -e ".[test]"
