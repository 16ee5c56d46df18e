"""What turns a prompt into pixels: SDXL-Turbo and the SDXL refiner stage by stage, the samplers,
schedules, seeds, tokenizer and previews.

Imports numpy and its own modules only. It never imports a runtime: it is handed one with the
interface of `app/runtime/interface.py`, so the same code runs on CPython and in the browser.
"""
