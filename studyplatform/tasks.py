"""Celery discovers tasks here; the job kinds of the study app are defined in jobs.py and services."""

from studyplatform import jobs  # noqa: F401
