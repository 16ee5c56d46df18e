#!/usr/bin/env bash
# The GPU benchmark in one command: installs its one npm package (pinned in package-lock.json), builds the
# site if needed, and runs run.mjs with the arguments given. On a GPU box Dawn finds the system's Vulkan
# driver; `--swiftshader` (first argument) uses Chromium's software Vulkan instead, as the tests do here.
#
#   bench/gpu/run.sh [--swiftshader] [--bundle DIR --manifest JSON] [--variant ID] [--sizes 512x512:1,512x512:4]
#                    [--runs N] [--reference torch.json]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if [ "${1:-}" = "--swiftshader" ]; then
  shift
  # Chromium's own libvulkan and SwiftShader (SWIFTSHADER_DIR to point elsewhere).
  dir="${SWIFTSHADER_DIR:-}"
  for d in /usr/lib/chromium /usr/lib/chromium-browser /opt/google/chrome; do
    [ -z "$dir" ] && [ -f "$d/vk_swiftshader_icd.json" ] && dir="$d"
  done
  [ -n "$dir" ] || { echo "no SwiftShader found: set SWIFTSHADER_DIR to a folder with vk_swiftshader_icd.json" >&2; exit 1; }
  export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export VK_ICD_FILENAMES="$dir/vk_swiftshader_icd.json"
fi
source "$here/env.sh"
[ -d "$here/node_modules/webgpu" ] || (cd "$here" && npm ci --no-audit --no-fund)
[ -f "$root/build/site/app.zip" ] || python3 "$root/build.py"
exec node "$here/run.mjs" "$@"
