#!/usr/bin/env bash
# Build llama.cpp's own command-line tools from the vendor/llama.cpp of the pinned
# llama-cpp-python sdist, so gemma-cli can be measured against the C++ loop it runs on.
#
# Why this exact source and these flags: the comparison is only fair against the same
# llama.cpp revision compiled the same way as the wheel gemma-cli loads. Two flavors:
#   portable  -DGGML_NATIVE=OFF + AVX2 (how .ci/run builds the wheel)    -> build-<version>
#   native    -DGGML_NATIVE=ON (a plain `pip install`: this CPU's ISA)  -> build-<version>-native
# The flavor follows the installed wheel (its llama_print_system_info: any CPU feature beyond the
# portable set means it was built for this CPU); FLAVOR=portable|native overrides.
# GGML_RPC is left out: the tools do not need it.
#
# Usage: [FLAVOR=...] benchmarks/native/build.sh [BUILD_ROOT]
#   BUILD_ROOT defaults to $GEMMA_NATIVE_DIR, else <repo>/.bench/native (gitignored).
#   JOBS (default 2) sets the parallel compile jobs. Re-running is cheap: it skips every
#   step whose output already exists, and prints the binary directory on the last line.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ROOT="${1:-${GEMMA_NATIVE_DIR:-$REPO/.bench/native}}"
JOBS="${JOBS:-2}"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
TOOLS=(llama-speculative-simple llama-bench llama-completion)

if [ -z "${FLAVOR:-}" ]; then
  FLAVOR=$(PYTHONPATH="$REPO/benchmarks/native:$REPO" "$PY" -c "import tools; print(tools.wheel_flavor())" 2>/dev/null || echo portable)
fi
case "$FLAVOR" in
  portable) GGML_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON); SUFFIX="" ;;
  native)   GGML_FLAGS=(-DGGML_NATIVE=ON); SUFFIX="-native" ;;
  *) echo "build.sh: FLAVOR must be portable or native, not '$FLAVOR'" >&2; exit 1 ;;
esac
echo "build.sh: $FLAVOR flavor (${GGML_FLAGS[*]})" >&2

SRC="$ROOT/src/llama_cpp_python-$VERSION"
BUILD="$ROOT/build-$VERSION$SUFFIX"
BIN="$BUILD/bin"

have_all() {
  local t
  for t in "${TOOLS[@]}"; do [ -x "$BIN/$t" ] || return 1; done
}

if have_all; then
  echo "native tools already built in $BIN" >&2
  echo "$BIN"
  exit 0
fi

for tool in cmake c++; do
  command -v "$tool" >/dev/null || { echo "build.sh: '$tool' not found; install it first" >&2; exit 1; }
done

mkdir -p "$ROOT/sdist" "$ROOT/src"
TARBALL="$ROOT/sdist/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$TARBALL" ]; then
  echo "downloading llama-cpp-python==$VERSION sdist" >&2
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$ROOT/sdist"
fi
if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
  echo "unpacking $TARBALL" >&2
  tar -xzf "$TARBALL" -C "$ROOT/src"
fi

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    "${GGML_FLAGS[@]}" -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >&2
fi
cmake --build "$BUILD" --config Release -j "$JOBS" --target "${TOOLS[@]}" >&2

have_all || { echo "build.sh: build finished but a tool is missing in $BIN" >&2; exit 1; }
echo "$BIN"
