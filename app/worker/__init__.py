"""The Web Worker's Python: the page <-> worker protocol, the job queue, progress and previews,
device capabilities, tiers and bench, request checks.

The only room that wires the other three together (it may import pipeline, runtime and store).
`protocol.start` is what static/worker.mjs calls.
"""
