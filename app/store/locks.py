"""Web Locks shared by every tab of the site: one owner per model's files (install, convert, verify,
delete) and one device bench at a time. Another tab's work is waited for or named, never collided
with (two tabs writing one OPFS file fail with a raw NoModificationAllowedError)."""

import asyncio
from contextlib import asynccontextmanager


def model_lock(model_id: str) -> str:
    return f"lantern-model-{model_id}"


BENCH_LOCK = "lantern-bench"


@asynccontextmanager
async def held(name: str, wait: bool = True):
    """Hold the lock `name` for the block. Yields True once held; with wait=False, yields False at once if
    another tab holds it. Cancelled while waiting, the lock is let go as soon as it is granted."""
    import js
    from pyodide.ffi import create_once_callable, to_js

    granted = asyncio.get_running_loop().create_future()
    release = []

    def on_grant(lock):
        if lock is None:  # ifAvailable, and another tab has it
            if not granted.done():
                granted.set_result(False)
            return None
        promise = js.Promise.new(create_once_callable(lambda resolve, reject: release.append(resolve)))
        if granted.done():  # the waiter was cancelled meanwhile
            release[0]()
        else:
            granted.set_result(True)
        return promise  # the lock is held until it resolves

    options = to_js({"ifAvailable": not wait}, dict_converter=js.Object.fromEntries)
    js.navigator.locks.request(name, options, create_once_callable(on_grant))
    got = await granted
    try:
        yield got
    finally:
        if release:
            release[0]()
