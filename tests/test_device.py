"""Tiers, model fit and fault kinds, with made-up devices and timings."""

import json

import pytest

from app.worker.bench import bench
from app.worker.device import (FAST_MAX_MS, MEDIUM_MAX_MS, assign_tier, default_resolution, fault_kind,
                        lower_resolution, pick_variant, unsuitable)
from conftest import ROOT, run

SDXL = {"name": "SDXL-Turbo", "resolutions": [[512, 512], [768, 768], [1024, 1024], [512, 768]],
        "requires": {"webgpu": True, "max_buffer_bytes": 1_200_000_000}}
TINY = {"name": "Tiny", "resolutions": [[64, 64], [64, 96], [128, 128]], "requires": {"webgpu": False},
        "tier_resolutions": {"fast": [128, 128], "medium": [64, 96], "slow": [64, 64]}}
GPU = {"backend": "webgpu", "shader_f16": False, "max_buffer_size": 4 * 2**30}


@pytest.mark.parametrize("ms, tier", [
    (0.5, "fast"), (FAST_MAX_MS, "fast"), (FAST_MAX_MS + 0.1, "medium"),
    (MEDIUM_MAX_MS, "medium"), (MEDIUM_MAX_MS + 0.1, "slow"), (5000, "slow"),
])
def test_tier_boundaries(ms, tier):
    assert assign_tier(ms) == tier


@pytest.mark.parametrize("tier, resolution", [("fast", (1024, 1024)), ("medium", (768, 768)), ("slow", (512, 512))])
def test_tier_sets_the_default_resolution(tier, resolution):
    assert default_resolution(SDXL, tier) == resolution
    assert default_resolution(TINY, tier) == tuple(TINY["tier_resolutions"][tier])


def test_lower_resolution_steps_down_until_the_smallest():
    assert lower_resolution(SDXL, 1024, 1024) == (768, 768)
    assert lower_resolution(SDXL, 512, 768) == (512, 512)
    assert lower_resolution(SDXL, 512, 512) is None


def test_model_fit_is_explained_before_download():
    assert unsuitable(SDXL, GPU) is None
    assert "needs WebGPU" in unsuitable(SDXL, {"backend": "wasm"})
    assert unsuitable(TINY, {"backend": "wasm"}) is None
    f16 = dict(SDXL, requires={"webgpu": True, "shader_f16": True})
    assert "shader-f16" in unsuitable(f16, GPU)
    assert unsuitable(f16, dict(GPU, shader_f16=True)) is None
    assert "more than this GPU allows" in unsuitable(SDXL, dict(GPU, max_buffer_size=2**30))


@pytest.mark.parametrize("message, kind", [
    ("Device lost: destroyed", "device-lost"),
    ("GPUDevice was lost (reason: unknown)", "device-lost"),
    ("Out of memory", "oom"),
    ("RangeError: Array buffer allocation failed", "oom"),
    ("Failed to allocate a buffer of size 123", "oom"),
    ("Invalid input name: foo", None),
])
def test_fault_kinds(message, kind):
    assert fault_kind(message) == kind


def test_bench_measures_the_loaded_model(cpu_pipeline):
    result = run(bench(cpu_pipeline, runs=2))
    assert len(result["runs_ms"]) == 2 and result["step_ms"] > 0
    assert result["tier"] == assign_tier(result["step_ms"]) and result["size"] == "64x64"


F16 = {"path": "unet/model.onnx", "url": "/f16", "size": 1, "sha256": "1" * 64}
F32 = {"path": "unet/model.onnx", "url": "/f32", "size": 2, "sha256": "2" * 64}


def test_variant_follows_shader_f16():
    entry = {"id": "sdxl", "name": "SDXL-Turbo", "resolutions": [[512, 512]], "variants": [
        {"id": "fp16", "files": [F16], "requires": {"webgpu": True, "shader_f16": True}},
        {"id": "fp32", "files": [F32], "requires": {"webgpu": True}},
    ]}
    on_f16 = pick_variant(entry, dict(GPU, shader_f16=True))
    assert on_f16["files"] == [F16] and on_f16["name"] == "SDXL-Turbo (fp16)" and on_f16["id"] == "sdxl"
    assert "variants" not in on_f16 and on_f16["resolutions"] == [[512, 512]]
    linux_nvidia = pick_variant(entry, GPU)  # no shader-f16 on Linux + NVIDIA
    assert linux_nvidia["variant"] == "fp32" and linux_nvidia["files"] == [F32] and unsuitable(linux_nvidia, GPU) is None
    on_cpu = pick_variant(entry, {"backend": "wasm"})
    assert on_cpu["variant"] == "fp16" and "needs WebGPU" in unsuitable(on_cpu, {"backend": "wasm"})


def test_a_single_variant_keeps_the_model_name():
    entry = {"id": "tiny", "name": "Tiny", "variants": [{"id": "fp32", "requires": {"webgpu": False}}]}
    chosen = pick_variant(entry, {"backend": "wasm"})
    assert chosen == {"id": "tiny", "name": "Tiny", "variant": "fp32", "requires": {"webgpu": False},
                      "needs": "Runs on any device (WebGPU or the CPU)"}


def test_the_models_panel_says_what_the_real_variants_need():
    entry = json.loads((ROOT / "models_manifest" / "sdxl-turbo.json").read_text())
    q4f16, q4, fp32 = (pick_variant(dict(entry, variants=[v]), GPU)["needs"] for v in entry["variants"])
    assert q4f16 == ("Needs WebGPU with 16-bit shaders (shader-f16), GPU buffers of 128 MiB, "
                     "about 4 GB of GPU memory, up to 2.0 GB of free memory in the tab to load its unet")
    assert q4 == ("Needs WebGPU, GPU buffers of 256 MiB, about 8 GB of GPU memory, "
                  "up to 3.9 GB of free memory in the tab to load its unet")
    # onnxruntime-web reads unet/model.onnx_data's 10.27 GB whole before it creates the session
    assert fp32 == ("Needs WebGPU, GPU buffers of 256 MiB, about 16 GB of GPU memory, "
                    "about 10.3 GB of free memory in the tab to load its unet")
    # The JSPI build streams the weights from storage to the GPU: the tab holds none of them whole.
    jspi = pick_variant(dict(entry, variants=[entry["variants"][0]]), dict(GPU, ort_build="jspi"))["needs"]
    assert jspi == "Needs WebGPU with 16-bit shaders (shader-f16), GPU buffers of 128 MiB, about 4 GB of GPU memory"


def test_sdxl_turbo_prefers_q4f16_then_q4_then_fp32():
    entry = json.loads((ROOT / "models_manifest" / "sdxl-turbo.json").read_text())
    assert pick_variant(entry, dict(GPU, shader_f16=True))["variant"] == "q4f16"
    without_f16 = pick_variant(entry, GPU)
    assert without_f16["variant"] == "q4" and without_f16["convert"]["to"] == "fp32-activations"
    assert without_f16["variant_reason"] == ("q4f16 needs 16-bit GPU shaders (shader-f16), which this device lacks, "
                                             "so the q4 variant is used here.")
    small_buffers = dict(GPU, max_buffer_size=200 * 2**20)
    assert pick_variant(entry, small_buffers)["variant"] == "q4f16"  # none fits: the first, with why not
    assert "needs GPU buffers of 256 MiB" in unsuitable(pick_variant(dict(entry, variants=entry["variants"][1:]),
                                                                     small_buffers), small_buffers)


def test_the_variant_a_device_gets_says_why_when_it_is_not_the_first():
    entry = {"id": "sdxl", "name": "SDXL-Turbo", "variants": [
        {"id": "q4f16", "requires": {"webgpu": True, "shader_f16": True}},
        {"id": "fp32", "requires": {"webgpu": True}},
    ]}
    assert "variant_reason" not in pick_variant(entry, dict(GPU, shader_f16=True))
    reason = pick_variant(entry, GPU)["variant_reason"]
    assert reason == ("q4f16 needs 16-bit GPU shaders (shader-f16), which this device lacks, "
                      "so the fp32 variant is used here.")
    assert "variant_reason" not in pick_variant(entry, {"backend": "wasm"})  # none runs: unsuitable() explains


def test_each_out_of_memory_retries_with_less_memory_then_a_smaller_size():
    from app.worker.device import next_memory

    assert [next_memory(m, False) for m in ("", "tiles", "parts", "parts+tiles")] == ["tiles", "parts+tiles",
                                                                                     "parts+tiles", None]
    # While loading, tiles cannot help: one part at a time at once.
    assert [next_memory(m, True) for m in ("", "tiles", "parts", "parts+tiles")] == ["parts", "parts+tiles", None, None]


def test_a_slow_device_with_small_buffers_starts_one_part_at_a_time():
    from app.worker.device import memory_preset

    phone = dict(GPU, max_buffer_size=256 * 2**20)
    assert memory_preset(phone, "slow") == "parts"
    assert memory_preset(phone, "medium") == memory_preset(GPU, "slow") == memory_preset({"backend": "wasm"}, "slow") == ""
