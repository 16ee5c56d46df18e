# The generator's controls (MicroPython): prompt and its history, seed, steps, resolution, images,
# previews and model; Generate and Retry read them, saved settings are put back into them.
import json

from pyscript import document, window

import gallery_ui
from page import el, show_error
from result import clear_results
from runs import retry, submit

HISTORY_KEY = "lantern.history"
MODEL_KEY = "lantern.model"
HISTORY_SIZE = 50
HISTORY_PROMPT_CHARS = 2000  # longer prompts are refused by the worker (app/worker/params.py): not kept

models = {}  # id -> {"defaults", "resolutions", "unsuitable", "pipeline"} from the worker's "ready" message
touched = {"any": False}  # the visitor changed steps, resolution or previews: presets leave them alone


def fill_resolutions(model_id, resolution=None, steps=None):
    select = el("resolution")
    select.innerHTML = ""
    model = models[model_id]
    d = model["defaults"]
    wanted = resolution or f"{d['height']}x{d['width']}"
    for h, w in model["resolutions"]:
        option = document.createElement("option")
        option.value = option.textContent = f"{h}x{w}"
        option.selected = option.value == wanted
        select.appendChild(option)
    el("steps").value = str(steps or d["steps"])
    reason = model["unsuitable"]
    el("notice").textContent = reason or ""
    el("notice").hidden = not reason


def remember_prompt(prompt):
    prompt = prompt.strip()
    if not prompt or len(prompt) > HISTORY_PROMPT_CHARS:
        return
    stored = window.localStorage.getItem(HISTORY_KEY)
    history = [p for p in (json.loads(stored) if stored else []) if p != prompt]
    history = [prompt] + history[: HISTORY_SIZE - 1]
    try:
        window.localStorage.setItem(HISTORY_KEY, json.dumps(history))
    except Exception:  # storage full or blocked: the list below still shows this visit's prompts
        pass
    render_history(history)


def render_history(history):
    select = el("history")
    while select.options.length > 1:
        select.remove(1)
    for prompt in history:
        option = document.createElement("option")
        option.value = option.textContent = prompt  # text, never markup
        select.appendChild(option)


def load_history():
    stored = window.localStorage.getItem(HISTORY_KEY)
    render_history(json.loads(stored) if stored else [])


def use_history(event):
    if el("history").value:
        el("prompt").value = el("history").value
        el("history").value = ""


def generate(event):
    count_text = el("count").value.strip()
    if not count_text.isdigit() or not 1 <= int(count_text) <= 8:
        show_error("Images must be a whole number from 1 to 8.")
        return
    count = int(count_text)
    seed = el("seed").value.strip()
    clear_results()
    remember_prompt(el("prompt").value)
    for k in range(count):  # a batch takes consecutive seeds
        submit({
            "prompt": el("prompt").value,
            "seed": str(int(seed) + k) if seed.isdigit() else seed,
            "steps": el("steps").value,
            "resolution": el("resolution").value,
            "model": el("model").value,
            "preview_every": el("preview-every").value,
            "autosave": gallery_ui.autosave(),
        }, count)


def apply_settings(p):
    """Put saved settings (a dict: prompt, seed, steps, height, width, model) back in the controls."""
    if p["model"] not in models:
        show_error(f"This image was made with the model {p['model']!r}, which is not available here.")
        return
    el("model").value = p["model"]
    fill_resolutions(p["model"], f"{p['height']}x{p['width']}", p["steps"])
    el("prompt").value = p["prompt"]
    el("seed").value = str(p["seed"])
    show_error("")


def retry_run(event):
    params = retry["params"]
    el("model").value = params["model"]
    fill_resolutions(params["model"], params["resolution"], params["steps"])
    clear_results()
    submit(dict(params, preview_every=el("preview-every").value, autosave=gallery_ui.autosave()))


def randomize(event):
    el("seed").value = str(int(window.Math.floor(window.Math.random() * 4294967296)))


def on_model_change(event):
    window.localStorage.setItem(MODEL_KEY, el("model").value)
    fill_resolutions(el("model").value)


def choose_model():
    """The model the visitor chose last time; else the first listed that runs on this device."""
    select = el("model")
    ids = [select.options[i].value for i in range(select.options.length)]
    runnable = [m for m in ids if not models[m]["unsuitable"]]
    remembered = window.localStorage.getItem(MODEL_KEY)
    chosen = remembered if remembered in ids else (runnable or ids or [""])[0]
    if chosen:
        select.value = chosen
