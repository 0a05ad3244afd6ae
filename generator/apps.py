from django.apps import AppConfig


class GeneratorConfig(AppConfig):
    name = "generator"
    verbose_name = "Counterfactual generator"

    def ready(self):
        # The job kinds (training, counterfactuals, evaluation, stimuli) must be known wherever jobs are enqueued.
        from generator import tasks  # noqa: F401
