"""Every awaited JS promise settles in Python, whatever it is rejected with.

Pyodide 0.27 hands a rejection's value to `_pyodide._future_helper.set_exception` as it is. An Error
becomes a JsException, but anything else (undefined, null, a string, a plain object: what a failed
write in a private window rejects with) makes `set_exception` raise "invalid exception object" as an
uncaught error, and the awaiting coroutine waits forever. `install()` wraps such values in
`JsRejection`, once, before any other await of the worker.
"""


class JsRejection(Exception):
    """A JS promise was rejected with a value that is not an Error."""


def describe(value) -> str:
    """Words for a rejection's value: its name and message where it has them, else its text."""
    if value is None:
        return "no reason given"
    name, message = getattr(value, "name", None), getattr(value, "message", None)
    if isinstance(name, str) and isinstance(message, str):
        return f"{name}: {message}"
    return str(value)


def install():
    import _pyodide._future_helper as helper

    original = helper.set_exception
    if getattr(original, "wraps_rejections", False):
        return

    def set_exception(future, value):
        if not isinstance(value, BaseException):
            value = JsRejection(f"a browser call failed ({describe(value)})")
        original(future, value)

    set_exception.wraps_rejections = True
    helper.set_exception = set_exception
