"""The graph templates the site ships, and the quantization they are made with."""

BLOCK_SIZE = 32    # as the q4f16 bundle's MatMulNBits
SYMMETRIC = True   # no zero points: one input fewer, and the GPU kernels' fast path
