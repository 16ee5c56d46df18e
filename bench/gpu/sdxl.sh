#!/usr/bin/env bash
# The SDXL benchmark in one command: random-weight SDXL bundles in the fp32, q4f16 and q4 layouts (made once,
# under --out, by make_bundle.py), PyTorch eager on the same weights (torch_bench.py, once, where torch sees
# a GPU), then the app's worker code on each layout (run.sh; `--variants ""` stops before). See README.md.
#
#   bench/gpu/sdxl.sh [--swiftshader] [--out DIR] [--config sdxl|small] [--sizes 512x512:1,512x512:4,1024x1024:1]
#                     [--variants fp32,q4f16,q4] [--dawn OPTION]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
source "$here/env.sh"
python="${PYTHON:-python3}"
gpu=() dawn=() out="" config=sdxl sizes="" variants="fp32 q4f16 q4"
while [ $# -gt 0 ]; do
  case "$1" in
    --swiftshader) gpu=(--swiftshader); shift ;;
    --out) out="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --sizes) sizes="$2"; shift 2 ;;
    --variants) variants="${2//,/ }"; shift 2 ;;
    --dawn) dawn+=(--dawn "$2"); shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
out="${out:-$here/bundles/$config}"
if [ -z "$sizes" ]; then
  [ "$config" = sdxl ] && sizes=512x512:1,512x512:4,1024x1024:1 || sizes=64x64:1,64x64:4,128x128:1
fi
if ! grep -qs "\"config\": \"$config\"" "$out/weights.json"; then
  "$python" "$here/make_bundle.py" --out "$out" --config "$config"
fi
# PyTorch's figures once per bundle (delete torch.json to measure again), where torch sees a GPU.
cuda='import torch, sys; sys.exit(not torch.cuda.is_available())'
if [ ! -f "$out/torch.json" ] && "$python" -c "$cuda" 2>/dev/null; then
  "$python" "$here/torch_bench.py" --bundle "$out" --sizes "$sizes"
fi
reference=()
[ -f "$out/torch.json" ] && reference=(--reference "$out/torch.json")
for variant in $variants; do
  echo "== $variant"
  "$here/run.sh" "${gpu[@]}" --bundle "$out/$variant" --manifest "$out/manifest.json" --variant "$variant" \
    --sizes "$sizes" "${reference[@]}" "${dawn[@]}"
done
