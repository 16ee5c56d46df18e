"""Gallery store (worker side): placeholder, replaced by the real OPFS-backed gallery."""


async def handle(msg, post):
    pass


async def autosave(job_id, png, parameters, post):
    pass
