"""Models of the study app. Background jobs live in jobs.py; the study itself in study.py."""

from .jobs import Job  # noqa: F401
from .study import AuditLog, Case, Invite, Participant, Response, Stimulus, Study  # noqa: F401
