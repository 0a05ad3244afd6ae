"""The job kind of the jobs app itself. Celery discovers this module; `JobsConfig.ready` imports it everywhere else."""

import os
import time

from jobs.runner import job_task


@job_task("selftest")
def selftest(ctx, steps=3, sleep=0.0, fail=False):
    """A tiny job used by health checks and tests of the worker path."""
    for step in range(steps):
        time.sleep(sleep)
        ctx.progress(100 * (step + 1) / steps, f"step {step + 1}/{steps}")
    if fail:
        raise RuntimeError("selftest asked to fail")
    return {"steps": steps, "pid": os.getpid()}
