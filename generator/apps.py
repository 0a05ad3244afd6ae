from django.apps import AppConfig


class GeneratorConfig(AppConfig):
    name = "generator"
    verbose_name = "Counterfactual generator"

    def ready(self):
        # The job kinds (training, counterfactuals, evaluation) must be known wherever jobs are enqueued, and a run
        # whose job lost its worker is failed with it.
        from generator import tasks  # noqa: F401
        from jobs.runner import worker_lost

        worker_lost.connect(tasks.fail_runs_of_lost_jobs, dispatch_uid="generator.fail_runs_of_lost_jobs")
