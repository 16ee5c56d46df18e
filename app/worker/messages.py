"""Messages to the page, and the JS values they carry (typed arrays, ImageBitmaps)."""

import time

import js
import numpy as np
from pyodide.ffi import to_js


def post(message: dict, transfer=()):
    js.postMessage(to_js(message, dict_converter=js.Object.fromEntries), to_js(list(transfer)))


def float32_array(arr: np.ndarray):
    out = js.Float32Array.new(arr.size)
    out.assign(np.ascontiguousarray(arr, dtype=np.float32))
    return out


def bytes_buffer(data: bytes):
    """An ArrayBuffer holding `data`, to transfer."""
    out = js.Uint8Array.new(len(data))
    out.assign(data)
    return out.buffer


async def image_bitmap(rgb: np.ndarray):
    h, w, _ = rgb.shape
    rgba = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)
    pixels = js.Uint8ClampedArray.new(rgba.size)
    pixels.assign(np.ascontiguousarray(rgba))
    return await js.createImageBitmap(js.ImageData.new(pixels, w, h))


async def browser_decode(data: bytes) -> np.ndarray:
    """RGBA uint8 [H, W, 4] of a picture as the browser decodes it: its colour profile converted to sRGB, its
    orientation applied, its alpha not premultiplied."""
    options = to_js({"colorSpaceConversion": "default", "premultiplyAlpha": "none", "imageOrientation": "from-image"},
                    dict_converter=js.Object.fromEntries)
    bitmap = await js.createImageBitmap(js.Blob.new(to_js([bytes_buffer(data)])), options)
    try:
        width, height = bitmap.width, bitmap.height
        context = js.OffscreenCanvas.new(width, height).getContext("2d")
        context.drawImage(bitmap, 0, 0)
        pixels = context.getImageData(0, 0, width, height).data.to_bytes()
    finally:
        bitmap.close()
    return np.frombuffer(pixels, np.uint8).reshape(height, width, 4)


def filename(model_id: str, seed: int) -> str:
    return f"{model_id}_{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}_{seed}.png"
