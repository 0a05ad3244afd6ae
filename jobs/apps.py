from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Background jobs"

    def ready(self):
        # The selftest kind, and with it the handler that fails jobs of a lost Celery child, must be registered in
        # every process that enqueues or runs jobs, not only where Celery autodiscovers tasks.
        from jobs import tasks  # noqa: F401
