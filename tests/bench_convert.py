"""Benchmark: the install-time q4f16 -> q4 conversion of an SDXL-sized UNet, in the worker, in headless Chromium.

    python tests/bench_convert.py [--scale 1.0]

Writes a synthetic UNet in the webnn q4f16 layout with SDXL's tensor count and sizes
(tests/sdxl_unet_tensors.json: every Linear weight as MatMulNBits' packed int4 bytes plus float16 scales,
every other parameter float16; random bytes, nodes only as the conversion needs them, so it is not
runnable), serves it as the only file of a made-up model whose variant converts it, and installs that
model from the Models panel. Prints the download+hash time, the conversion time and MB/s (source bytes
per second), how that compares with downloading the same bytes at 50 MB/s, the converted files' sizes,
and the browser's peak extra resident memory (all Chromium processes, sampled every 50 ms) over its level
before the click: flat means it does not grow with the file.
"""

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from app.onnx.wire import FLOAT16, LENGTH_DELIMITED, message_field, varint  # noqa: E402
from bench_install import MIB, bench_models, bench_page, chromium_pids, rss, tiny_entry  # noqa: E402
from test_browser_hub import opfs_json  # noqa: E402

UINT8 = 2
SOURCE = "onnx/unet_model_q4f16.onnx"


def _int(number, value):
    return varint(number << 3) + varint(value)


def _str(number, text):
    return message_field(number, text.encode())


def tensors(scale: float):
    """(name, data type, dims, consumer op) of the synthetic UNet's initializers."""
    spec = json.loads((ROOT / "tests" / "sdxl_unet_tensors.json").read_text())
    out = []
    for shape, count in spec["linear"].items():
        n, k = map(int, shape.split("x"))
        for i in range(max(1, round(count * scale))):
            out.append((f"linear{len(out)}.B", UINT8, [n, k // 32, 16], "MatMulNBits"))
            out.append((f"linear{len(out)}.scales", FLOAT16, [n * (k // 32)], "MatMulNBits"))
    for shape, count in spec["other"].items():
        dims = [int(d) for d in shape.split("x")]
        for i in range(max(1, round(count * scale))):
            out.append((f"other{len(out)}", FLOAT16, dims, "Conv" if len(dims) == 4 else "Add"))
    return out


def tensor_head(name, dtype, dims, nbytes) -> bytes:
    """A TensorProto up to and including its raw_data key and length (the bytes follow)."""
    return (b"".join(_int(1, d) for d in dims) + _int(2, dtype) + _str(8, name)
            + varint(9 << 3 | LENGTH_DELIMITED) + varint(nbytes))


def write_unet(path: Path, scale: float) -> tuple[int, str]:
    """Stream the synthetic model to `path`; returns (size, sha256)."""
    items = [(name, dtype, dims, op, math.prod(dims) * (1 if dtype == UINT8 else 2))
             for name, dtype, dims, op in tensors(scale)]
    nodes = b"".join(message_field(1, _str(1, "x") + _str(1, name) + _str(2, f"y{i}") + _str(4, op)
                                   + (_str(7, "com.microsoft") if op == "MatMulNBits" else b""))
                     for i, (name, _, _, op, _) in enumerate(items))
    fp16_value = lambda name: message_field(1, _str(1, name) + message_field(2, message_field(1, _int(1, FLOAT16))))
    tail = message_field(11, fp16_value("x")) + message_field(12, fp16_value("y0"))
    heads = [tensor_head(name, dtype, dims, n) for name, dtype, dims, _, n in items]
    graph_len = len(nodes) + len(tail) + sum(1 + len(varint(len(h) + n)) + len(h) + n
                                             for h, (*_, n) in zip(heads, items))
    model_head = (_int(1, 8) + message_field(8, _str(1, "") + _int(2, 17))
                  + message_field(8, _str(1, "com.microsoft") + _int(2, 1))
                  + varint(7 << 3 | LENGTH_DELIMITED) + varint(graph_len))
    block = os.urandom(4 * MIB)
    digest, size = hashlib.sha256(), 0
    with open(path, "wb") as f:
        def put(data):
            nonlocal size
            f.write(data)
            digest.update(data)
            size += len(data)

        put(model_head + nodes)
        for head, (*_, n) in zip(heads, items):
            put(varint(5 << 3 | LENGTH_DELIMITED) + varint(len(head) + n) + head)
            while n:
                piece = block[:min(n, len(block))]
                put(piece)
                n -= len(piece)
        put(tail)
    return size, digest.hexdigest()


def wait_state(page, model_id, state):
    page.wait_for_function(f"document.getElementById('model-{model_id}').dataset.state === '{state}'",
                           timeout=3_600_000, polling=100)
    return time.perf_counter()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of SDXL's tensor count (1.0: ~1.9 GB)")
    args = parser.parse_args()
    template = tiny_entry()
    with tempfile.TemporaryDirectory() as tmp:
        models = bench_models(tmp)
        (models / "bench-unet" / "onnx").mkdir(parents=True)
        t0 = time.perf_counter()
        size, sha256 = write_unet(models / "bench-unet" / SOURCE, args.scale)
        print(f"synthetic q4f16 UNet: {size / 1e9:.2f} GB, {len(tensors(args.scale))} tensors, written in "
              f"{time.perf_counter() - t0:.0f} s")
        files = [{"path": SOURCE, "url": f"/models/bench-unet/{SOURCE}", "size": size, "sha256": sha256}]
        variant = {"id": "q4", "precision": "q4", "requires": {"webgpu": False, "shader_f16": False},
                   "gpu_memory_bytes": 0, "disk_bytes": size, "files": files,
                   "convert": {"from": {"unet": SOURCE}, "to": "fp32-activations"}}
        extra = dict({k: v for k, v in template.items() if k != "bench"}, id="bench-unet", name="Benchmark UNet",
                     variants=[variant])
        with bench_page(tmp, models, [extra]) as page:
            time.sleep(2)
            pids = chromium_pids()
            base = rss(pids)
            peak = {"download": base, "convert": base}
            phase = {"now": "download"}
            done = threading.Event()

            def sample():
                while not done.is_set():
                    peak[phase["now"]] = max(peak[phase["now"]], rss(pids))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()
            start = time.perf_counter()
            page.locator("#model-bench-unet").get_by_role("button", name="Install", exact=True).click()
            converting = wait_state(page, "bench-unet", "converting")
            phase["now"] = "convert"
            installed = wait_state(page, "bench-unet", "installed")
            done.set()
            sampler.join()
            converted = opfs_json(page, "bench-unet", "installed.json")["converted"]
    download_s, convert_s = converting - start, installed - converting
    print(f"download + sha256: {download_s:.1f} s ({size / download_s / 1e6:.0f} MB/s, loopback)")
    print(f"conversion:        {convert_s:.1f} s ({size / convert_s / 1e6:.0f} MB/s of source); downloading the "
          f"same bytes at 50 MB/s takes {size / 50e6:.0f} s (conversion/download = {convert_s / (size / 50e6):.2f})")
    for path, (_, n) in sorted(converted.items()):
        print(f"  {path}: {n / 1e9:.3f} GB")
    print(f"converted in all:  {sum(n for _, n in converted.values()) / 1e9:.2f} GB on disk "
          f"(source {size / 1e9:.2f} GB)")
    print(f"peak extra RSS over the level before the click: download {(peak['download'] - base) / MIB:.0f} MiB, "
          f"conversion {(peak['convert'] - base) / MIB:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
