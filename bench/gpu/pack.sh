#!/usr/bin/env bash
# Everything the GPU benchmark would fetch or build, in one archive, for a GPU machine without network access:
# Node (this machine's binary), the pinned `webgpu` package, the built site, diffusers' wheel (make_bundle.py
# and torch_bench.py need it beside torch, transformers and onnx) and a Vulkan loader. On that machine, in a
# checkout of the same commit: `tar xJf gpu-pack.tar.xz`, then sdxl.sh or run.sh as usual (env.sh finds
# .gpu-pack/ and uses what the machine lacks).
#
#   bench/gpu/pack.sh [ARCHIVE]        (default build/gpu-pack.tar.xz)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
archive="$(realpath -m "${1:-$root/build/gpu-pack.tar.xz}")"
diffusers=diffusers==0.42.1
[ -d "$here/node_modules/webgpu" ] || (cd "$here" && npm ci --no-audit --no-fund)
python3 "$root/build.py" >/dev/null
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/.gpu-pack/bin" "$stage/.gpu-pack/lib" "$stage/.gpu-pack/wheels"
cp "$(command -v node)" "$stage/.gpu-pack/bin/node"
python3 -m pip download -q --no-deps --only-binary=:all: -d "$stage/.gpu-pack/wheels" "$diffusers"
loader="$(ldconfig -p | awk '/libvulkan\.so\.1 .*x86-64/ {print $NF; exit}')"
for d in /usr/lib/chromium /usr/lib/chromium-browser /opt/google/chrome; do
  [ -z "$loader" ] && [ -f "$d/libvulkan.so.1" ] && loader="$d/libvulkan.so.1"
done
[ -n "$loader" ] || { echo "no Vulkan loader (libvulkan.so.1) found to pack" >&2; exit 1; }
cp -L "$loader" "$stage/.gpu-pack/lib/libvulkan.so.1"
mkdir -p "$(dirname "$archive")"
# Only the Linux x64 build of Dawn: the others are half the package.
tar -cJf "$archive" --exclude='bench/gpu/node_modules/webgpu/dist/[!l]*' \
  --exclude='bench/gpu/node_modules/webgpu/dist/linux-arm64' \
  -C "$root" bench/gpu/node_modules build/site -C "$stage" .gpu-pack
echo "$archive: $(du -h "$archive" | cut -f1)"
