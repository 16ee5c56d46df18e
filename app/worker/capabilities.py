"""What the browser offers: WebGPU or not, the adapter, shader-f16, the buffer limits, and which
onnxruntime-web build static/worker.mjs loaded ("jspi" where the browser has JSPI, else "asyncify")."""

import js


async def capabilities() -> dict:
    caps = {"webgpu": False, "adapter": False, "backend": "wasm", "ort_build": str(js.lanternOrtBuild)}
    gpu = getattr(js.navigator, "gpu", None)
    if gpu is None:
        caps["reason"] = "This browser does not offer WebGPU."
        return caps
    caps["webgpu"] = True
    adapter = await gpu.requestAdapter()
    if adapter is None:
        caps["reason"] = "WebGPU is present but no GPU adapter was given (it may be disabled or blocklisted)."
        return caps
    info = adapter.info
    caps.update(
        adapter=True, backend="webgpu",
        vendor=info.vendor, architecture=info.architecture, description=info.description,
        fallback_adapter=bool(getattr(info, "isFallbackAdapter", False) or getattr(adapter, "isFallbackAdapter", False)),
        shader_f16=bool(adapter.features.has("shader-f16")),
        max_buffer_size=int(adapter.limits.maxBufferSize),
        max_storage_buffer_binding_size=int(adapter.limits.maxStorageBufferBindingSize),
    )
    return caps
