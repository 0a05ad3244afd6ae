from django.apps import AppConfig


class StudyPlatformConfig(AppConfig):
    name = "studyplatform"
    verbose_name = "Reader studies"

    def ready(self):
        from studyplatform import tasks  # noqa: F401
