# Runs (MicroPython): the requests sent to the worker, the visible queue with its cancel buttons,
# progress and status, and surviving a lost GPU (replace the worker, resume from the checkpoint)
# or running out of memory (offer a retry at a lower preset).
from pyscript import document, window

from page import count, el, field_error, listen, new_id, replace_worker, send, set_status, show_error, worker

MAX_FAILED_RECOVERIES = 2
# What each stage is called on the page (the worker's names are for code and logs).
STAGE_TEXT = {"load": "Loading the model…", "encode prompt": "Reading the prompt…", "decode": "Finishing the image…",
              "install encoder": "Installing the image-to-image add-on…", "encode image": "Reading the picture…"}
STEP_TEXT = {"denoise": "Drawing", "refine": "Refining"}

jobs = {}  # id -> {"params", "checkpoint": (step, latents) | None, "failed": int, ...}, unfinished only
retry = {"params": None, "source": None}
ahead = {"bench": ""}  # work the visitor did not ask for that runs before their requests (the device bench)
needs_install = {"model": None}  # the error on show says this model is not installed: it goes once it is


def on_models_changed(state_of):
    if needs_install["model"] and state_of(needs_install["model"]) == "installed":
        needs_install["model"] = None
        show_error("")


def seconds_text(seconds):
    if seconds < 1:
        return "under a second"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def now_ms():
    return window.performance.now()


def set_retry(params, label, source=None):
    retry["params"] = params
    retry["source"] = source
    button = el("retry")
    button.textContent = label
    button.hidden = params is None


def send_job(job_id):
    job = jobs[job_id]
    job["generation"] = worker["generation"]
    message = {"type": "generate", "id": job_id, "params": job["params"]}
    if job.get("base_latents") is not None:
        message["type"] = "refine"
        message["latents"] = job["base_latents"]
    if job.get("source") is not None:
        message["source"] = job["source"]  # copied, not moved: a resend or a retry sends it again
    if job["checkpoint"]:
        step, latents = job["checkpoint"]
        message["resume"] = {"step": step, "latents": latents}
    send(message)


def resend():
    """After a worker was replaced: the unfinished requests it has not been sent."""
    for job_id in sorted(jobs):
        if jobs[job_id].get("generation") != worker["generation"]:
            send_job(job_id)


def submit(params, batch=1, base_latents=None, index=1, source=None):
    """Send one request; `index` is its place in a batch of `batch` images; `source`: the bytes of the picture
    it starts from (or of the result it upscales)."""
    show_error("")
    set_retry(None, "")
    job_id = new_id()
    h, w = (params["resolution"].split("x") + ["64"])[:2]
    size = (int(w), int(h)) if h.isdigit() and w.isdigit() else (64, 64)
    # "asked": when the visitor asked for it, so the caption can say how long they waited.
    jobs[job_id] = {"params": params, "checkpoint": None, "failed": 0, "batch": batch, "size": size,
                    "base_latents": base_latents, "source": source, "index": index, "asked": now_ms(), "started": False,
                    "step_at": []}
    el("cancel").disabled = False
    render_queue()
    if len(jobs) == 1:
        set_status("Starting…", 0)
    send_job(job_id)


def step_text(job, msg):
    """"Drawing: step 2 of 4 · about 3 s left", the time left from this run's own step times."""
    verb = STEP_TEXT[msg.stage]
    times = job["step_at"]
    if not msg.step:
        times.clear()
        times.append(now_ms())
        return verb + "…"
    count("status", "steps")  # denoising steps shown on this page
    times.append(now_ms())
    text = f"{verb}: step {msg.step} of {msg.steps}"
    left = msg.steps - msg.step
    if left and len(times) > 1:
        text += f" · about {seconds_text((times[-1] - times[0]) / (len(times) - 1) * left / 1000)} left"
    return text


def on_progress(msg):
    job = jobs.get(msg.id)
    if job is None:
        return
    if not job["started"]:
        job["started"] = True
        render_queue()  # it now runs
    if msg.stage in STEP_TEXT:
        text = step_text(job, msg)
    else:
        text = STAGE_TEXT.get(msg.stage.split(" ")[0] if msg.stage.startswith("load") else msg.stage, "Working…")
    if job["batch"] > 1:
        text = f"Image {job['index']} of {job['batch']} · {text}"
    set_status(text, msg.fraction)


def on_queued(msg):
    if jobs and msg.id == min(jobs):  # nothing the visitor asked for is ahead of it: say what is
        set_status(f"Waiting: {ahead['bench']}" if ahead["bench"] else "Waiting for the GPU…")


def set_ahead(text):
    """Show (or, with "", clear) the device bench at the head of the queue."""
    ahead["bench"] = text
    render_queue()


def on_checkpoint(msg):
    job = jobs.get(msg.id)
    if job:
        job["checkpoint"] = (msg.step, msg.latents)
        job["failed"] = 0  # the run moved on: earlier recoveries worked


def finish(job_id, text):
    if job_id not in jobs:  # e.g. a queued request the page already dropped
        return
    jobs.pop(job_id)
    count("status", "finished")  # runs ended on this page (done, cancelled or stopped)
    el("cancel").disabled = not jobs
    render_queue()
    if jobs and text == "Done.":
        text = f"Done. {len(jobs)} more to go…"
    set_status(text, 1 if text.startswith("Done.") else 0)


def cancel_job(job_id):
    send({"type": "cancel", "id": job_id})
    if job_id != min(jobs):  # not started yet: gone from the queue at once
        jobs.pop(job_id, None)
        render_queue()


def cancel(event):
    for job_id in jobs:
        send({"type": "cancel", "id": job_id})


def render_queue():
    """Every unfinished request, oldest (running) first, each with its own cancel button."""
    queue = el("queue")
    queue.innerHTML = ""
    if ahead["bench"] and jobs:
        item = document.createElement("li")
        item.textContent = ahead["bench"]
        queue.appendChild(item)
    for job_id in sorted(jobs):
        job = jobs[job_id]
        p = job["params"]
        item = document.createElement("li")
        text = document.createElement("span")
        text.className = "queue-text"  # one line; a long prompt ends in an ellipsis
        state = "Running" if job["started"] else "Queued"
        what = f"upscale ×{p['upscale']} of " if p.get("upscale") else ""
        text.textContent = f"{state}: {what}{p['prompt']} (seed {p['seed']})"
        text.title = p["prompt"][:300]
        button = document.createElement("button")
        button.type = "button"
        button.textContent = "✕"
        # Named without the prompt (a prompt's words must not make this a "Prompt" control); described by it.
        text.id = f"queue-item-{job_id}"
        button.setAttribute("aria-label", f"Cancel request {job_id}")
        button.setAttribute("aria-describedby", text.id)
        listen(button, "click", lambda event, job_id=job_id: cancel_job(job_id))
        item.appendChild(text)
        item.appendChild(button)
        queue.appendChild(item)


def on_device_lost(msg):
    job = jobs.get(msg.id)
    if job is None:
        replace_worker()
        return
    job["failed"] += 1
    if job["failed"] > MAX_FAILED_RECOVERIES:
        params = job["params"]
        finish(msg.id, "Stopped.")
        show_error("The GPU keeps failing (device lost again while recovering). Close other GPU-heavy tabs "
                   "or restart the browser, then press Retry.")
        set_retry(params, "Retry", job.get("source"))
    else:
        set_status(msg.message)
    replace_worker()


def on_error(msg):
    if msg.kind == "device-lost":
        on_device_lost(msg)
        return
    if msg.kind == "input" and msg.field:  # a value the visitor can fix: said beside its field
        finish(msg.id, "")
        field_error(msg.field, msg.message)
        return
    params = jobs[msg.id]["params"] if msg.id in jobs else None
    source = jobs[msg.id].get("source") if msg.id in jobs else None
    show_error(msg.message)
    needs_install["model"] = params["model"] if params and " is not installed." in msg.message else None
    finish(msg.id, "Stopped.")
    if msg.kind == "oom":
        offered = getattr(msg, "retry", None)  # none when nothing smaller is left
        if offered:
            kept = {k: getattr(offered, k) for k in ("guidance", "negative_prompt", "strength", "fit", "upscale")
                    if getattr(offered, k, None) is not None}
            set_retry(dict(kept, prompt=offered.prompt, seed=offered.seed, steps=offered.steps,
                           resolution=offered.resolution, model=offered.model, memory=offered.memory or ""),
                      msg.retry_label, source)
        else:
            set_retry(params, "Retry", source)
        replace_worker()  # free everything the failed run allocated
