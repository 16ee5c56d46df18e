# The Device panel (MicroPython): what the worker found (WebGPU, adapter, shader-f16, limits) and
# the device tier measured by the first-visit benchmark, kept per device in localStorage.
import json

from pyscript import document, window

import form
import runs
import welcome
from page import count, el, new_id, send

BENCH_KEY = "lantern.bench"
MEASURING = "Measuring this device (once; it sets the defaults)"
bench = {"id": None, "caps": None}


def show_capabilities(caps):
    bench["caps"] = caps
    rows = [("Back end", "WebGPU" if caps.backend == "webgpu" else "CPU (wasm)")]
    if caps.backend == "webgpu":
        rows += [("Adapter", f"{caps.vendor} {caps.architecture} {caps.description}".strip() or "unnamed"),
                 ("Software adapter", "yes" if caps.fallback_adapter else "no"),
                 ("shader-f16", "yes" if caps.shader_f16 else "no"),
                 ("Largest GPU buffer", f"{caps.max_buffer_size // 1048576} MiB"),
                 ("Largest block a shader reads", f"{caps.max_storage_buffer_binding_size // 1048576} MiB")]
    else:
        rows.append(("Why", caps.reason))
    rows.append(("Model loading", "streamed to the GPU (JSPI)" if caps.ort_build == "jspi"
                 else "each model file read whole first (this browser lacks JSPI)"))
    dl = el("capabilities")
    dl.innerHTML = ""
    for name, value in rows:
        dt = document.createElement("dt")
        dt.textContent = name
        dd = document.createElement("dd")
        dd.textContent = str(value)
        dl.appendChild(dt)
        dl.appendChild(dd)


def device_key(caps):
    # Without WebGPU there is no adapter: no vendor, architecture or description.
    return "|".join(str(getattr(caps, name, "")) for name in ("backend", "vendor", "architecture", "description"))


def apply_bench(result):
    times = ", ".join(f"{t:.0f}" for t in result["runs_ms"])
    el("tier").textContent = (f"Device tier: {result['tier'].upper()} — one UNet step of the {result['model']} "
                              f"bench model at {result['size']} takes {result['step_ms']:.0f} ms (runs: {times} ms).")
    welcome.state["tier"] = result["tier"].upper()
    preset = result["presets"].get(el("model").value)
    if preset:
        form.apply_preset(preset)  # only to the fields the visitor has not set
    welcome.update()


def run_bench(event=None):
    bench["id"] = new_id()
    el("rebench").disabled = True
    el("tier").textContent = f"Device tier: {MEASURING.lower()}…"
    welcome.state["tier"] = ""
    runs.set_ahead(MEASURING + "…")
    welcome.update()
    send({"type": "bench", "id": bench["id"]})


def on_bench_progress(msg):
    text = f"{MEASURING}: run {msg.step} of {msg.steps}…" if msg.stage == "bench run" else MEASURING + "…"
    el("tier").textContent = "Device tier: " + text[0].lower() + text[1:]
    runs.set_ahead(text)


def first_visit(caps):
    """The stored tier for this device, or a new measurement."""
    stored = window.localStorage.getItem(BENCH_KEY)
    saved = json.loads(stored) if stored else None
    if saved and saved["device"] == device_key(caps):
        apply_bench(saved["result"])
        el("rebench").disabled = False
    else:
        run_bench()


def rerun_if_interrupted():
    """A replaced worker never answered the benchmark: ask the new one."""
    if bench["id"]:
        run_bench()


def is_bench(job_id):
    return job_id == bench["id"]


def on_bench(msg):
    result = {"tier": msg.tier, "step_ms": msg.step_ms, "model": msg.model, "size": msg.size,
              "runs_ms": [msg.runs_ms[i] for i in range(msg.runs_ms.length)], "presets": {}}
    for model_id in form.models:
        p = msg.presets[model_id]
        result["presets"][model_id] = {"resolution": p.resolution, "steps": p.steps, "preview_every": p.preview_every}
    window.localStorage.setItem(BENCH_KEY, json.dumps({"device": device_key(bench["caps"]), "result": result}))
    el("rebench").disabled = False
    bench["id"] = None
    runs.set_ahead("")
    apply_bench(result)
    count("tier", "measured")  # benchmarks finished on this page


def on_bench_failed(msg):
    # The tier stays unmeasured (the models' own defaults apply) until a re-run succeeds.
    bench["id"] = None
    runs.set_ahead("")
    el("rebench").disabled = False
    el("tier").textContent = f"Device tier: not measured. {msg.message} Use “Re-run benchmark” to try again."
    welcome.state["tier"] = "not measured"
    welcome.update()
