# Runs (MicroPython): the requests sent to the worker, the visible queue with its cancel buttons,
# progress and status, and surviving a lost GPU (replace the worker, resume from the checkpoint)
# or running out of memory (offer a retry at a lower preset).
from pyscript import document

from page import count, el, listen, new_id, replace_worker, send, set_status, show_error, worker

MAX_FAILED_RECOVERIES = 2
STAGE_TEXT = {"load": "Loading the model…", "encode prompt": "Encoding the prompt…", "decode": "Decoding the image…"}

jobs = {}  # id -> {"params", "checkpoint": (step, latents) | None, "failed": int, ...}, unfinished only
retry = {"params": None}


def set_retry(params, label):
    retry["params"] = params
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
    if job["checkpoint"]:
        step, latents = job["checkpoint"]
        message["resume"] = {"step": step, "latents": latents}
    send(message)


def resend():
    """After a worker was replaced: the unfinished requests it has not been sent."""
    for job_id in sorted(jobs):
        if jobs[job_id].get("generation") != worker["generation"]:
            send_job(job_id)


def submit(params, batch=1, base_latents=None):
    show_error("")
    set_retry(None, "")
    job_id = new_id()
    h, w = (params["resolution"].split("x") + ["64"])[:2]
    size = (int(w), int(h)) if h.isdigit() and w.isdigit() else (64, 64)
    jobs[job_id] = {"params": params, "checkpoint": None, "failed": 0, "batch": batch, "size": size,
                    "base_latents": base_latents}
    el("cancel").disabled = False
    render_queue()
    if len(jobs) == 1:
        set_status("Starting…", 0)
    send_job(job_id)


def on_progress(msg):
    if msg.stage in ("denoise", "refine") and msg.step:
        count("status", "steps")  # denoising steps shown on this page
    if msg.stage == "denoise":
        text = f"Denoising: step {msg.step} of {msg.steps}…" if msg.step else "Denoising…"
    elif msg.stage == "refine":
        text = f"Refining: step {msg.step} of {msg.steps}…" if msg.step else "Refining…"
    elif msg.stage.startswith("load "):
        text = f"Loading the model ({msg.stage[5:]})…"
    else:
        text = STAGE_TEXT.get(msg.stage, msg.stage)
    set_status(text, msg.fraction)


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
    for n, job_id in enumerate(sorted(jobs)):
        p = jobs[job_id]["params"]
        item = document.createElement("li")
        text = document.createElement("span")
        text.textContent = f"{'Running' if n == 0 else 'Queued'}: {p['prompt']} (seed {p['seed']})"
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
        set_retry(params, "Retry")
    else:
        set_status(msg.message)
    replace_worker()


def on_error(msg):
    if msg.kind == "device-lost":
        on_device_lost(msg)
        return
    params = jobs[msg.id]["params"] if msg.id in jobs else None
    show_error(msg.message)
    finish(msg.id, "Stopped.")
    if msg.kind == "oom":
        offered = msg.retry
        if offered:
            set_retry({"prompt": offered.prompt, "seed": offered.seed, "steps": offered.steps,
                       "resolution": offered.resolution, "model": offered.model},
                      f"Retry at {offered.resolution}, {offered.steps} steps")
        else:
            set_retry(params, "Retry")
        replace_worker()  # free everything the failed run allocated
