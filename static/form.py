# The generator's controls (MicroPython): prompt and its history, seed, steps, resolution, images,
# previews and model; Generate and Retry read them, saved settings are put back into them.
import json

from pyscript import document, window

import gallery_ui
import picture
from page import clear_field_errors, el, field_error, send, show_error
from result import clear_results
from runs import retry, submit

HISTORY_KEY = "lantern.history"
MODEL_KEY = "lantern.model"
HISTORY_SIZE = 50
HISTORY_PROMPT_CHARS = 2000  # longer prompts are refused by the worker (app/worker/params.py): not kept

models = {}  # id -> {"defaults", "resolutions", "unsuitable", "pipeline", "encoder"} from the worker's "ready" message
# Fields the visitor set (or used, by pressing Generate): start-up, the bench's presets and the model's
# defaults leave them alone.
touched = set()
tokens = {"timer": None, "proxy": None, "state": ""}  # "state": the chosen model's install state when last asked


def chosen(id):
    node = el(id)
    # A field typed into before the page's code was running has only its changed value to show for it.
    return id in touched or "generate" in touched or (node.tagName == "INPUT" and node.value != node.defaultValue)


def apply_preset(preset):
    """A tier's preset, to the fields the visitor has not set."""
    if not chosen("resolution") and el("resolution").querySelector(f'option[value="{preset["resolution"]}"]'):
        el("resolution").value = preset["resolution"]
    if not chosen("steps"):
        el("steps").value = str(preset["steps"])
    if not chosen("preview-every"):
        el("preview-every").value = str(preset["preview_every"])
    if not chosen("memory") and "memory" in preset:
        el("memory").value = preset["memory"]


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
    el("steps").max = str(model["max_steps"])
    if steps:
        el("steps").value = str(steps)
    elif not chosen("steps"):  # the model's default, also as the field's: not a choice of the visitor's (chosen())
        el("steps").defaultValue = el("steps").value = str(d["steps"])
    if not chosen("guidance"):  # a base-like model of the visitor's own asks for guidance; SDXL-Turbo for none
        # as the field's default too, so that it does not count as the visitor's own choice (chosen())
        el("guidance").defaultValue = el("guidance").value = str(d["guidance"])
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
        option.value = prompt
        option.textContent = prompt if len(prompt) <= 90 else prompt[:89] + "…"  # text, never markup
        select.appendChild(option)


def load_history():
    stored = window.localStorage.getItem(HISTORY_KEY)
    render_history(json.loads(stored) if stored else [])


def use_history(event):
    if el("history").value:
        el("prompt").value = el("history").value
        el("history").value = ""
        ask_tokens()


def clear_history(event):
    window.localStorage.removeItem(HISTORY_KEY)
    render_history([])


def ask_tokens():
    """Count the prompt's tokens once typing pauses (the worker holds the model's tokenizer)."""
    if tokens["timer"] is not None:
        window.clearTimeout(tokens["timer"])
    tokens["timer"] = window.setTimeout(tokens["proxy"], 250)


def send_tokens():
    tokens["timer"] = None
    send({"type": "tokens", "model": el("model").value, "text": el("prompt").value})


def on_models_changed(state_of):
    """The chosen model's tokenizer arrives with its install: count again then."""
    state = state_of(el("model").value)
    if state != tokens["state"]:
        tokens["state"] = state
        ask_tokens()


def on_tokens(msg):
    if msg.model != el("model").value or msg.text != el("prompt").value:
        return  # an answer about an earlier text; the latest is on its way
    counter = el("tokens")
    counter.textContent = f"{msg.count} of {msg.limit} tokens" if msg.count >= 0 and msg.text.strip() else ""
    cut = msg.count > msg.limit
    counter.classList.toggle("over", cut)
    el("tokens-cut").textContent = (f"The model reads the first {msg.limit} tokens; the last "
                                    f"{msg.count - msg.limit} are ignored. Put what matters first." if cut else "")


def on_key(event):
    if event.key == "Enter" and (event.ctrlKey or event.metaKey):  # Ctrl+Enter (Cmd+Enter on a Mac)
        event.preventDefault()
        if not el("generate").disabled:
            generate(event)


def generate(event):
    clear_field_errors()
    count_text = el("count").value.strip()
    if not count_text.isdigit() or not 1 <= int(count_text) <= 8:
        field_error("count", "Images must be a whole number from 1 to 8.")
        return
    touched.add("generate")  # the visitor used these values: presets that arrive later leave them alone
    count = int(count_text)
    seed = el("seed").value.strip()
    clear_results()
    remember_prompt(el("prompt").value)
    source = picture.source()
    for k in range(count):  # a batch takes consecutive seeds
        params = {
            "prompt": el("prompt").value,
            "seed": str(int(seed) + k) if seed.isdigit() else seed,
            "steps": el("steps").value,
            "resolution": el("resolution").value,
            "model": el("model").value,
            "guidance": el("guidance").value,
            "negative_prompt": el("negative-prompt").value,
            "preview_every": el("preview-every").value,
            "memory": el("memory").value,
            "autosave": gallery_ui.autosave(),
        }
        if source is not None:
            params.update(strength=el("strength").value, fit=el("fit").value)
        submit(params, count, index=k + 1, source=source)


def apply_settings(p, source):
    """Put saved settings back in the controls: every one from this gallery (`source` ""), what fits from a
    dropped image (`source` names the app that made it; another app's may lack some or use other models).
    Returns what was done, in a sentence."""
    model = p.get("model")
    if model is not None and model not in models and not source:
        show_error(f"This image was made with the model {model!r}, which is not available here.")
        return ""
    show_error("")
    skipped = []
    if model in models:
        el("model").value = model
        fill_resolutions(model)
    elif model is not None:
        skipped.append(f"its model {model!r} (not available here)")
    if "height" in p:
        size = f"{p['height']}x{p['width']}"
        if el("resolution").querySelector(f'option[value="{size}"]'):
            el("resolution").value = size
        else:
            skipped.append(f"its size {size} (not offered by this model)")
    if "steps" in p:
        if 1 <= int(p["steps"]) <= 4:
            el("steps").value = str(p["steps"])
        else:
            skipped.append(f"its {p['steps']} steps (this model takes 1 to 4)")
    for field in ("prompt", "seed"):
        if field in p:
            el(field).value = str(p[field])
    # Guidance and its negative prompt come back as the image had them (none: guidance off).
    el("guidance").value = str(p.get("guidance", 1))
    el("negative-prompt").value = p.get("negative_prompt", "")
    if "strength" in p:
        el("strength").value = str(p["strength"])
    touched.update(("resolution", "steps"))  # restored on purpose: no preset may change them
    ask_tokens()
    if not source:
        return ""
    text = f"Settings restored from the dropped {source} image."
    return text + (" Not restored: " + "; ".join(skipped) + "." if skipped else "")


def on_picture(height, width):
    """A picture was chosen: the offered resolution whose shape is nearest its own (the visitor may change it)."""
    shape = width / height
    options = el("resolution").options
    sizes = [options[i].value for i in range(options.length)]
    el("resolution").value = min(sizes, key=lambda v: abs(int(v.split("x")[1]) / int(v.split("x")[0]) - shape))
    touched.add("resolution")


def update_picture(state_of):
    model_id = el("model").value
    encoder = models.get(model_id, {}).get("encoder")
    picture.update(model_id, encoder, state_of(encoder["id"]) if encoder and encoder["id"] else "")


def retry_run(event):
    params = retry["params"]
    el("model").value = params["model"]
    fill_resolutions(params["model"], params["resolution"], params["steps"])
    clear_results()
    el("memory").value = params.get("memory", "")  # kept for the runs after it: the memory they need is the same
    touched.add("memory")
    submit(dict(params, preview_every=el("preview-every").value, memory=el("memory").value,
                autosave=gallery_ui.autosave()), source=retry.get("source"))


def randomize(event):
    el("seed").value = str(int(window.Math.floor(window.Math.random() * 4294967296)))


def on_model_change(event):
    window.localStorage.setItem(MODEL_KEY, el("model").value)
    fill_resolutions(el("model").value)
    ask_tokens()


def choose_model():
    """The model the visitor chose last time; else the first listed that runs on this device."""
    select = el("model")
    ids = [select.options[i].value for i in range(select.options.length)]
    runnable = [m for m in ids if not models[m]["unsuitable"]]
    remembered = window.localStorage.getItem(MODEL_KEY)
    chosen = remembered if remembered in ids else (runnable or ids or [""])[0]
    if chosen:
        select.value = chosen
