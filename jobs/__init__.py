"""Generic background jobs: the Job model, the runner that enqueues and executes them, and the reaper.

The app sits beneath the others: it imports neither the study app nor the generator, which register their job
kinds with `jobs.runner.job_task` and listen to `jobs.runner.worker_lost`.
"""
