"""What this device can do, and what to do when it can't: tiers, model fit, fault kinds.

Pure functions of plain data (capabilities as reported by the worker, timings, manifest
entries), so they are tested on CPython with made-up devices.
"""

from dataclasses import dataclass

from ..store.manifest import PARTS, conversion_growth

# Tier thresholds on the bench's median UNet step time (bench.py), in ms. The bench model is
# tiny, so its step time is dominated by per-kernel dispatch cost: discrete GPUs do it in a few
# ms, integrated GPUs in tens of ms, software rasterisers (SwiftShader) and the wasm CPU back end
# in hundreds.
FAST_MAX_MS = 25.0
MEDIUM_MAX_MS = 120.0


@dataclass(frozen=True)
class Preset:
    tier: str
    side: int  # target image side in pixels for a 1024-native model
    steps: int  # final-image steps
    preview_every: int  # steps between previews; 0 = no previews


PRESETS = {
    "fast": Preset("fast", 1024, 4, 1),
    "medium": Preset("medium", 768, 2, 2),
    "slow": Preset("slow", 512, 1, 0),
}
TIER_ORDER = ["fast", "medium", "slow"]


def assign_tier(step_ms: float) -> str:
    if step_ms <= FAST_MAX_MS:
        return "fast"
    if step_ms <= MEDIUM_MAX_MS:
        return "medium"
    return "slow"


def default_resolution(entry: dict, tier: str) -> tuple[int, int]:
    """The model's resolution for a tier: its own per-tier choice, else the largest listed
    resolution whose longer side fits the tier's target, else the smallest listed."""
    own = entry.get("tier_resolutions", {}).get(tier)
    if own:
        return tuple(own)
    by_area = sorted((tuple(r) for r in entry["resolutions"]), key=lambda r: r[0] * r[1])
    fitting = [r for r in by_area if max(r) <= PRESETS[tier].side]
    return fitting[-1] if fitting else by_area[0]


# What to try after the GPU ran out of memory, one step at a time (the page's "memory" choice): decode in
# tiles; then also create, run and release each part in turn (at once when it failed while loading, where
# tiles cannot help); then a smaller size.
NEXT_MEMORY = {"": "tiles", "tiles": "parts+tiles", "parts": "parts+tiles"}
MEMORY_WORDS = {"tiles": "decoding in tiles", "parts+tiles": "loading one part at a time and decoding in tiles",
                "parts": "loading one part at a time"}


def next_memory(memory: str, while_loading: bool) -> str | None:
    """The next memory choice to retry with after an out-of-memory, or None when only a smaller size is left."""
    if while_loading:
        return None if "parts" in memory else "parts+tiles" if "tiles" in memory else "parts"
    return NEXT_MEMORY.get(memory)


def memory_preset(caps: dict, tier: str) -> str:
    """The memory choice a device starts with: one part at a time where the GPU is slow and small (its
    largest buffer at most 256 MiB: phones, small integrated GPUs); WebGPU tells nothing of its memory size."""
    small = 0 < int(caps.get("max_buffer_size") or 0) <= 256 * 2**20
    return "parts" if small and tier == "slow" else ""


def lower_resolution(entry: dict, height: int, width: int) -> tuple[int, int] | None:
    """The next smaller listed resolution (by pixel count), or None at the smallest."""
    smaller = sorted((tuple(r) for r in entry["resolutions"] if r[0] * r[1] < height * width),
                     key=lambda r: r[0] * r[1])
    return smaller[-1] if smaller else None


def lacking(entry: dict, caps: dict) -> str | None:
    """The first requirement of a model or variant this device does not meet: "webgpu", "shader_f16",
    "buffers", or None when it meets them all."""
    needs = entry.get("requires", {})
    if caps.get("backend") != "webgpu" and needs.get("webgpu", True):
        return "webgpu"
    if needs.get("shader_f16") and not caps.get("shader_f16"):
        return "shader_f16"
    limit = caps.get("max_buffer_size")
    if limit and needs.get("max_buffer_bytes", 0) > limit:
        return "buffers"
    return None


def variant_for(family: dict, caps: dict) -> dict:
    """The variant a checkpoint of this template family is converted to here: the first this device runs
    (q4f16 needs shader-f16), or the last when none does (the page then says why it cannot run)."""
    return next((v for v in family["variants"] if lacking(v, caps) is None), family["variants"][-1])


def unsuitable(entry: dict, caps: dict) -> str | None:
    """Why this model cannot run here (in plain words), or None if it can."""
    lack = lacking(entry, caps)
    if lack == "webgpu":
        return (f"{entry['name']} needs WebGPU, which this browser does not offer here; "
                "only small models can run on the CPU.")
    if lack == "shader_f16":
        return (f"{entry['name']} uses 16-bit GPU shaders (shader-f16), which this GPU does not support. "
                "Choose its fp32 variant.")
    if lack == "buffers":
        limit = caps["max_buffer_size"]
        return (f"{entry['name']} needs GPU buffers of {entry['requires']['max_buffer_bytes'] / 2**20:.0f} MiB, "
                f"more than this GPU allows ({limit / 2**20:.0f} MiB).")
    return None


def pick_variant(entry: dict, caps: dict) -> dict:
    """The entry as it will run here: the model's fields merged with its first listed variant this
    device can run (the manifest lists fp16 before fp32 to prefer it where shader-f16 exists), or
    with the first variant when none fits, so that `unsuitable` explains why. "variant" names the
    chosen variant; the name carries it only when there is a choice."""
    model = {k: v for k, v in entry.items() if k != "variants"}
    many = len(entry["variants"]) > 1
    merged = [{**model, **v, "id": entry["id"], "variant": v["id"],
               "name": f"{entry['name']} ({v['id']})" if many else entry["name"]}
              for v in entry["variants"]]
    chosen = next((m for m in merged if unsuitable(m, caps) is None), merged[0])
    if chosen is not merged[0]:
        chosen = dict(chosen, variant_reason=f"{merged[0]['variant']} needs {missing(merged[0], caps)}, which this "
                                             f"device lacks, so the {chosen['variant']} variant is used here.")
    return dict(chosen, needs=needs_text(chosen, caps))


def needs_text(entry: dict, caps: dict) -> str:
    """What a variant asks of the device, in a few words for the Models panel."""
    needs = entry.get("requires", {})
    if not needs.get("webgpu", True):
        return "Runs on any device (WebGPU or the CPU)"
    parts = ["WebGPU" + (" with 16-bit shaders (shader-f16)" if needs.get("shader_f16") else "")]
    if needs.get("max_buffer_bytes"):
        parts.append(f"GPU buffers of {needs['max_buffer_bytes'] / 2**20:.0f} MiB")
    if entry.get("gpu_memory_bytes"):
        parts.append(f"about {entry['gpu_memory_bytes'] / 1e9:.0f} GB of GPU memory")
    part, size = largest_part(entry)
    # onnxruntime-web's asyncify build reads a model's weights whole before it builds the session; the JSPI
    # build streams them from storage to the GPU (a 1.9 GB model: 579 MiB peak in the tab,
    # measured in Chromium 156).
    if size >= 1e9 and caps.get("ort_build") != "jspi":
        bound = "up to" if part in entry.get("convert", {}).get("from", {}) else "about"
        parts.append(f"{bound} {size / 1e9:.1f} GB of free memory in the tab to load its {part}")
    return "Needs " + ", ".join(parts)


def largest_part(entry: dict) -> tuple[str, int]:
    """The pipeline part with the most bytes to load (its graph and external data), and that size; for a
    converted variant, the most its converted files can take."""
    sizes = {f["path"]: f["size"] for f in entry.get("files", [])}
    convert = entry.get("convert", {}).get("from", {})
    growth = conversion_growth(entry)
    loads = {}
    for part in PARTS:
        if part in convert:
            loads[part] = growth * sizes.get(convert[part], 0)
            continue
        graph = entry.get("parts", {}).get(part, f"{part}/model.onnx")
        folder = graph.rpartition("/")[0]
        loads[part] = sizes.get(graph, 0) + sum(n for p, n in sizes.items() if p.rpartition("/")[0] == folder and p
                                                != graph and not p.endswith((".onnx", ".json")))
    return max(loads.items(), key=lambda item: item[1], default=("", 0))


def missing(entry: dict, caps: dict) -> str:
    """What of a variant's requirements this device lacks, in a few words."""
    return {"webgpu": "WebGPU", "shader_f16": "16-bit GPU shaders (shader-f16)"}.get(
        lacking(entry, caps), f"GPU buffers of {entry.get('requires', {}).get('max_buffer_bytes', 0) / 2**20:.0f} MiB")


_LOST = ("device lost", "device was lost", "devicelost", "device is lost", "destroyed", "gpudevicelost")
_OOM = ("out of memory", "outofmemory", "failed to allocate", "allocation failed", "memoryerror",
        "array buffer allocation", "bad_alloc", "oom")


def fault_kind(message: str) -> str | None:
    """'device-lost', 'oom', or None for an error that is neither."""
    text = message.lower()
    if any(k in text for k in _LOST):
        return "device-lost"
    if any(k in text for k in _OOM):
        return "oom"
    return None
