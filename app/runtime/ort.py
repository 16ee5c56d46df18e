"""Runtime on CPython: onnxruntime sessions over a bundle folder (tests, parity checks)."""

import json
from pathlib import Path

import onnxruntime as ort
from tokenizers import Tokenizer

from .interface import input_spec


class OrtSession:
    def __init__(self, session: ort.InferenceSession):
        self._session = session
        self.inputs = {i.name: input_spec(i.type, i.shape) for i in session.get_inputs()}
        self.output_names = [o.name for o in session.get_outputs()]

    async def run(self, feeds, output_names):
        values = self._session.run(output_names, feeds)
        return dict(zip(output_names, values))

    def release(self):
        self._session = None


class OrtRuntime:
    name = "onnxruntime"

    def __init__(self, root, providers=("CPUExecutionProvider",)):
        self.root = Path(root)
        self.providers = list(providers)
        self._sessions = []

    async def read_json(self, path):
        return json.loads((self.root / path).read_text(encoding="utf-8"))

    async def tokenizer(self, tokenizer_json):
        tok = Tokenizer.from_str(json.dumps(tokenizer_json))
        return lambda text: tok.encode(text).ids

    async def session(self, path, free_dimensions=None):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        for name, value in (free_dimensions or {}).items():
            options.add_free_dimension_override_by_name(name, value)
        s = OrtSession(ort.InferenceSession(str(self.root / path), options, providers=self.providers))
        self._sessions = [x for x in self._sessions if x._session is not None] + [s]  # (low-memory mode releases some)
        return s

    def release(self):
        for s in self._sessions:
            s.release()
        self._sessions.clear()
