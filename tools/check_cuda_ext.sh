#!/usr/bin/env bash
# Compile check of the hash-grid CUDA extension on a machine without a GPU (nothing is run).
#   tools/check_cuda_ext.sh [sm_arch]   (default sm_90)
# 1. nvcc -c on hashgrid.cu: the kernels are plain CUDA, so this needs no torch headers.
# 2. a syntax-only C++20 (torch 2.13 headers need it) host compile of the torch binding hashgrid.cpp against torch's headers. The CPU torch wheel
#    lacks c10/cuda/impl/cuda_cmake_macros.h (generated at CUDA builds), so a stub goes in a temp include dir.
set -euo pipefail

ARCH="${1:-sm_90}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/cuda_ext/hashgrid"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
NVCC="${NVCC:-nvcc}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "== nvcc -arch=$ARCH -c hashgrid.cu"
"$NVCC" -arch="$ARCH" -O3 -std=c++17 -Werror all-warnings -c "$SRC/hashgrid.cu" -o "$TMP/hashgrid.o"
echo "ok: $(stat -c %s "$TMP/hashgrid.o") bytes of object code"

mkdir -p "$TMP/include/c10/cuda/impl"
cat > "$TMP/include/c10/cuda/impl/cuda_cmake_macros.h" <<'H'
#pragma once
// Stub of the header a CUDA build of torch generates; the CPU wheel does not ship it.
H
INCLUDES=()
while IFS= read -r dir; do INCLUDES+=("-I$dir"); done < <("$PY" -c \
    "from torch.utils.cpp_extension import include_paths; print('\n'.join(include_paths()))")
# Ask nvcc for its toolkit root: `nvcc` may be a wrapper script outside the toolkit.
CUDA_TOP="${CUDA_HOME:-$("$NVCC" --dryrun -E -x cu /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)}"
CUDA_INC="$CUDA_TOP/include"
PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"

echo "== c++ -fsyntax-only hashgrid.cpp (torch headers)"
"${CXX:-c++}" -std=c++20 -fsyntax-only -Wall -Werror -DTORCH_EXTENSION_NAME=talkgs_hashgrid \
    -I"$TMP/include" "${INCLUDES[@]}" -I"$CUDA_INC" -I"$PYINC" "$SRC/hashgrid.cpp"
echo "ok"
