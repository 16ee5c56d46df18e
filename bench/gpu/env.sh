# Sourced by run.sh and sdxl.sh: the tools an unpacked pack.sh archive brought (Node; the Vulkan loader and
# diffusers where the machine lacks them), and the GPU's Vulkan driver where it is installed off the usual paths.
pack="$root/.gpu-pack"
if [ -d "$pack" ]; then
  export PATH="$pack/bin:$PATH"  # its Node, the one the pack was tested with
  if ! ldconfig -p | grep 'libvulkan\.so\.1 ' >/dev/null; then
    export LD_LIBRARY_PATH="$pack/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  if ! "${PYTHON:-python3}" -c 'import diffusers' 2>/dev/null; then
    [ -d "$pack/site" ] ||
      "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --target "$pack/site" "$pack"/wheels/*.whl
    export PYTHONPATH="$pack/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
installed_icds() {
  for icd in /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json; do [ -f "$icd" ] && return 0; done
  return 1
}
if [ -z "${VK_ICD_FILENAMES:-}${VK_DRIVER_FILES:-}" ] && ! installed_icds; then
  for icd in /usr/local/nvidia/share/vulkan/icd.d/*.json; do
    if [ -f "$icd" ]; then export VK_DRIVER_FILES="$icd"; break; fi
  done
fi
