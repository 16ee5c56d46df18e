"""The job queue: one lock serialises GPU work, a second request waits its turn, and a cancel works
whether the request is queued or running (it takes effect at the next stage or step)."""

import asyncio
import traceback

from ..store.layout import InstallError
from .messages import post
from .params import InputError


class Cancelled(Exception):
    pass


class JobQueue:
    def __init__(self, report_failure):
        self.report_failure = report_failure  # (job_id, error, params) -> None, for unexpected errors
        self.lock = asyncio.Lock()
        self.cancelled = set()
        self.waiting = []

    def cancel(self, job_id):
        self.cancelled.add(job_id)

    def check(self, job_id):
        """Raise Cancelled if this job was cancelled: called between stages and steps."""
        if job_id in self.cancelled:
            raise Cancelled()

    async def run(self, job_id, work, *args):
        """Run one request in turn; every failure becomes a message and leaves the worker usable."""
        self.waiting.append(job_id)
        if self.lock.locked():
            post({"type": "queued", "id": job_id, "ahead": len(self.waiting)})  # the running job + those waiting
        try:
            async with self.lock:
                self.waiting.remove(job_id)
                self.check(job_id)
                await work(job_id, *args)
        except Cancelled:
            post({"type": "cancelled", "id": job_id})
        except (InputError, InstallError) as e:
            post({"type": "error", "id": job_id, "message": str(e), "kind": "input", "field": getattr(e, "field", "")})
        except Exception as e:
            traceback.print_exc()
            self.report_failure(job_id, e, args[0] if args else None)
        finally:
            self.cancelled.discard(job_id)
