from django.apps import AppConfig


class GeneratorConfig(AppConfig):
    name = "generator"
    verbose_name = "Counterfactual generator"

    def ready(self):
        # The job kinds (training, counterfactuals, evaluation, stimuli) must be known wherever jobs are enqueued.
        from generator import tasks  # noqa: F401
        from studyplatform.jobs import worker_lost

        worker_lost.connect(tasks.fail_runs_of_lost_jobs, dispatch_uid="generator.fail_runs_of_lost_jobs")
