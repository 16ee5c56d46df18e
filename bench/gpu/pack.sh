#!/usr/bin/env bash
# Everything the GPU benchmark would fetch or build, for a GPU machine without network access, in two archives
# of about 30 and 20 MB (so that each travels easily): tools.tar.xz holds Node (this machine's binary), the
# pinned `webgpu` package (Linux x64) and a Vulkan loader; site.tar.xz the parts of the built site the
# benchmark loads and diffusers' wheel (make_bundle.py and torch_bench.py need it beside torch, transformers
# and onnx). On that machine, in a checkout of the same commit: `tar xJf` both, then sdxl.sh or run.sh as
# usual (env.sh finds .gpu-pack/).
#
#   bench/gpu/pack.sh [FOLDER]        (default build/gpu-pack)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$(realpath -m "${1:-$root/build/gpu-pack}")"
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
mkdir -p "$out"
# Only the Linux x64 build of Dawn: the others are half the package.
tar -cJf "$out/tools.tar.xz" --exclude='bench/gpu/node_modules/webgpu/dist/[!l]*' \
  --exclude='bench/gpu/node_modules/webgpu/dist/linux-arm64' \
  -C "$root" bench/gpu/node_modules -C "$stage" .gpu-pack/bin .gpu-pack/lib
tar -cJf "$out/site.tar.xz" -C "$root" build/site/app.zip build/site/vendor/ort build/site/vendor/pyodide \
  build/site/vendor/tokenizers -C "$stage" .gpu-pack/wheels
du -h "$out"/*.tar.xz
