"""Low-memory mode: a runtime whose sessions hold GPU memory one at a time.

Each part's session is created once at load (for its inputs and outputs), then released; a run creates
it again if another part's session was the one holding memory, releasing that one first. Memory then
peaks at the largest part (the UNet) instead of the sum of all of them, at the cost of creating each
part's session again in every run. The pipeline does not notice: the sessions it is handed have the
interface of `interface.py`, and the same inputs give the same outputs.
"""


class OneAtATime:
    def __init__(self, runtime, beside=None):
        """`beside`: another OneAtATime (the model an add-on serves) whose one live session this one shares."""
        self.runtime = runtime
        self.name = f"{runtime.name}, one part at a time"
        self.slot = beside.slot if beside is not None else _Slot()

    async def read_json(self, path):
        return await self.runtime.read_json(path)

    async def tokenizer(self, tokenizer_json):
        return await self.runtime.tokenizer(tokenizer_json)

    async def session(self, path, free_dimensions=None):
        part = _Part(self, path, free_dimensions)
        await part.open()
        part.close()
        return part

    def release(self):
        if self.slot.live is not None and self.slot.live.owner is self:
            self.slot.live.close()
        self.runtime.release()


class _Slot:
    live = None  # the _Part whose session holds memory now


class _Part:
    """One part's session, created when it runs and the part before it released."""

    def __init__(self, owner, path, free_dimensions):
        self.owner, self.path, self.free_dimensions = owner, path, free_dimensions
        self.session = None

    async def open(self):
        slot = self.owner.slot
        if slot.live is not None and slot.live is not self:
            slot.live.close()
        if self.session is None:
            self.session = await self.owner.runtime.session(self.path, self.free_dimensions)
            self.inputs, self.output_names = self.session.inputs, self.session.output_names
        slot.live = self

    def close(self):
        if self.session is not None:
            self.session.release()
            self.session = None
        if self.owner.slot.live is self:
            self.owner.slot.live = None

    async def run(self, feeds, output_names):
        await self.open()
        return await self.session.run(feeds, output_names)

    def release(self):
        self.close()
