"""Models of the study app, defined in study.py. Background jobs have their own app, `jobs`."""

from .study import AuditLog, Case, Invite, Participant, Response, Stimulus, Study  # noqa: F401
