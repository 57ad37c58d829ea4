#!/usr/bin/env bash
# Pack what scripts/gpu_check.sh needs on the lent GPU machine, which has CUDA, PyTorch (with
# cuDNN in its wheels), cmake and g++, but none of the Debian packages this project builds with,
# and no way to install them (it reaches nothing outside itself):
#   build/    the binaries the check runs (tests/test_gpu, apps/slotcon, bench/bench_*), built here
#             for the card (sm_90 unless ARCH is set) and stripped; sources.sha256 fingerprints
#             the sources they were built from, so the check can tell when they are stale;
#   lib/      the shared libraries they need that the card's machine lacks (OpenBLAS with its
#             libgfortran and libquadmath, stb), found with ldd; CUDA, cuBLAS and cuDNN are not
#             packed: the check finds the machine's own;
#   include/, lib/cmake, share/cmake
#             the headers and CMake packages to build there instead when the binaries are stale
#             or do not start (CBLAS, Catch2, nlohmann_json, stb, cuDNN's headers): the kit is a
#             prefix for CMAKE_PREFIX_PATH.
# Output: .devkit/slotcon-devkit.tar.xz (git-ignored, about 20 MB). Name `.devkit` in the device
# call's carry; gpu_check.sh unpacks it. Costs no device time: run it here, before the call.
#
# Usage: scripts/devkit.sh [build-dir]        env: ARCH=90 JOBS=$(nproc)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build-devkit}"
arch="${ARCH:-90}"
kitdir="$root/.devkit"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
kit="$stage/slotcon-devkit"
t0=$(date +%s)

command -v nvcc >/dev/null || { echo "devkit: nvcc not found (the kit's binaries need it)" >&2; exit 1; }

echo "== build (sm_$arch) in $build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DSLOTCON_CUDA=ON -DSLOTCON_REQUIRE_CUDNN=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" >"$stage/configure.log" 2>&1 ||
  { cat "$stage/configure.log"; exit 1; }
targets=(test_gpu slotcon)
for f in "$root"/bench/*.cpp "$root"/bench/*.cu; do
  [ -e "$f" ] && targets+=("bench_$(basename "${f%.*}")")
done
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target "${targets[@]}" >"$stage/build.log" 2>&1 ||
  { tail -40 "$stage/build.log"; exit 1; }

echo "== pack"
mkdir -p "$kit/build/tests" "$kit/build/apps" "$kit/build/bench" "$kit/lib" "$kit/include" \
         "$kit/share/cmake"
strip -o "$kit/build/tests/test_gpu" "$build/tests/test_gpu"
strip -o "$kit/build/apps/slotcon" "$build/apps/slotcon"
for t in "${targets[@]}"; do
  case "$t" in bench_*) strip -o "$kit/build/bench/$t" "$build/bench/$t" ;; esac
done

# Shared libraries: everything ldd resolves except the C/C++ runtime (the machine's own, newer)
# and CUDA's libraries (the machine's own, matching its driver).
for b in "$kit"/build/*/*; do ldd "$b"; done |
  awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
  while read -r name path; do
    case "$name" in
      libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
      libcudart*|libcublas*|libcudnn*|libcuda.so*|libnccl*) ;;
      *) cp -L "$path" "$kit/lib/$name" ;;
    esac
  done
# link-time names, as a system install has them (find_library looks for libX.so)
for l in "$kit"/lib/*.so.*; do
  base="$(basename "$l")"
  ln -sf "$base" "$kit/lib/${base%%.so.*}.so"
done

# Headers and CMake packages for a rebuild there.
cblas="$(dirname "$(readlink -f "$(find /usr/include -name cblas.h | head -1)")")"
cp "$cblas"/*.h "$kit/include/"
cp -r /usr/include/catch2 /usr/include/nlohmann /usr/include/stb "$kit/include/"
cudnn_h="$(grep -E '^SLOTCON_CUDNN_INCLUDE:' "$build/CMakeCache.txt" | cut -d= -f2)"
cp "$cudnn_h"/cudnn*.h "$kit/include/"
catch_dir="$(grep -E '^Catch2_DIR:' "$build/CMakeCache.txt" | cut -d= -f2)"
json_dir="$(grep -E '^nlohmann_json_DIR:' "$build/CMakeCache.txt" | cut -d= -f2)"
mkdir -p "$kit/lib/cmake"
cp -r "$catch_dir" "$kit/lib/cmake/Catch2"
cp -r "$json_dir" "$kit/share/cmake/nlohmann_json"
# Catch2's package names its static library; a prefix tree needs it where the package says.
for a in $(grep -ho '_IMPORT_PREFIX}/lib/[A-Za-z0-9_.]*\.a' "$kit"/lib/cmake/Catch2/*.cmake | sort -u); do
  cp "/usr/lib/$(basename "$a")" "$kit/lib/" 2>/dev/null ||
    cp "$(find /usr/lib -name "$(basename "$a")" | head -1)" "$kit/lib/"
done

# What the binaries were built from: every tracked or new file the build reads.
(cd "$root" && git ls-files --cached --others --exclude-standard -- CMakeLists.txt engine kernels \
   model data apps bench tests configs | sort | while read -r f; do [ -f "$f" ] && sha256sum "$f"; done) \
  >"$kit/sources.sha256"
{
  echo "built: $(date -u +%Y-%m-%dT%H:%MZ) on $(hostname) ($(. /etc/os-release && echo "$PRETTY_NAME"))"
  echo "commit: $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- . || echo ' + uncommitted changes')"
  echo "arch: sm_$arch"
  echo "nvcc: $(nvcc --version | tail -1)"
  echo "glibc: $(ldd --version | head -1)"
  echo "needs at least: $(for f in "$kit"/build/*/* "$kit"/lib/*.so.*; do objdump -T "$f" 2>/dev/null; done |
    grep -oE 'GLIBC_[0-9.]+|GLIBCXX_[0-9.]+' | sort -V -u | awk -F_ '{m[$1]=$0} END {print m["GLIBC"], m["GLIBCXX"]}')"
  echo "cudnn headers: $(grep -E '#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) ' "$cudnn_h/cudnn_version.h" | awk '{print $3}' | paste -sd.)"
  echo "libs: $(cd "$kit/lib" && ls *.so.* | paste -sd' ')"
} >"$kit/INFO"

mkdir -p "$kitdir"
tar -C "$stage" -cf - slotcon-devkit | xz -T0 -6 >"$kitdir/slotcon-devkit.tar.xz.tmp"
mv "$kitdir/slotcon-devkit.tar.xz.tmp" "$kitdir/slotcon-devkit.tar.xz"
cat "$kit/INFO"
echo "devkit: $kitdir/slotcon-devkit.tar.xz, $(du -h "$kitdir/slotcon-devkit.tar.xz" | cut -f1)" \
     "($(( $(date +%s) - t0 ))s); carry \".devkit\" in the device call"
