"""The graph templates the site ships, and the quantization they are made with."""

BLOCK_SIZE = 32    # as the q4f16 bundle's MatMulNBits
SYMMETRIC = True   # no zero points: one input fewer, and the GPU kernels' fast path
F16 = ".f16"       # <part>.f16.onnx: the part's q4f16 graph (models/make_f16_templates.py)
PRECISIONS = ("q4f16", "q4")  # what a checkpoint converts to: fp16 or fp32 math around the int4 weights


def graphs(stems: dict, precision: str) -> dict:
    """{part: graph} of one precision from a family's {file stem: graph} (or its index entries): q4f16 takes a
    part's .f16 graph where there is one (the VAE has none: SDXL's overflows fp16, so it stays fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"no graph templates for {precision}")
    base = {part: g for part, g in stems.items() if not part.endswith(F16)}
    return {part: stems.get(part + F16, g) if precision == "q4f16" else g for part, g in base.items()}
