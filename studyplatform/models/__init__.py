"""Models of the study app. Background jobs live in jobs.py; the study itself in study.py."""

from .jobs import Job  # noqa: F401
