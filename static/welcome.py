# The image stage before the first picture (MicroPython): what this device can run, the model the
# visitor is about to use (its variant and download size) with a one-click install, or how to start.
import form
import models_ui
from page import el, listen

state = {"caps": None, "tier": ""}


def device_text(caps):
    if caps.backend != "webgpu":
        return "This browser gives this page no WebGPU, so images are made on the CPU: slowly, and small models only."
    kind = "a software GPU (slow)" if caps.fallback_adapter else "a GPU"
    f16 = "with" if caps.shader_f16 else "without"
    tier = f" Speed tier: {state['tier']}." if state["tier"] else " Measuring its speed…"
    return f"This device has WebGPU on {kind}, {f16} 16-bit shaders.{tier}"


def update():
    if state["caps"] is None:
        return
    el("welcome-device").textContent = device_text(state["caps"])
    model_id = el("model").value
    m = models_ui.info.get(model_id)
    unsuitable = form.models[model_id]["unsuitable"] if model_id in form.models else ""
    button = el("welcome-install")
    if m is None:
        text = ""
    elif m["state"] == "installed":
        text = f"{m['name']} is ready. Type a prompt and press Generate (Ctrl+Enter)."
    elif unsuitable:
        text = unsuitable
    elif m["state"] in ("downloading", "converting", "verifying", "importing"):
        text = f"Installing {m['name']}… (progress in the Models panel below)"
    else:
        variant = f"the {m['variant']} variant, " if m["variant"] else ""
        text = f"{m['name']} for this device: {variant}a {models_ui.size_text(m['total_mb'])} download, kept for next time."
        button.textContent = f"Install {m['name']}"
    el("welcome-model").textContent = text
    button.hidden = m is None or m["state"] not in ("not-installed", "partial", "damaged") or bool(unsuitable)


def setup(caps):
    state["caps"] = caps
    listen(el("welcome-install"), "click", lambda event: models_ui.install(el("model").value))
    update()
