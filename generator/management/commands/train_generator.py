"""`manage.py train_generator`: train a generator run stage by stage, in the foreground or as a background job."""

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from generator.models import TrainingRun
from generator.services import runs, training
from generator.services.requests import TrainingRequest


class StageBars:
    """One tqdm bar per training stage, advanced by the pipeline's progress(stage, fraction, message) calls."""

    TICKS = 1000

    def __init__(self, stream):
        self.stream = stream
        self.stage, self.bar = None, None

    def __call__(self, stage, fraction, message=""):
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=self.TICKS, desc=f"{stage:>14}", file=self.stream, leave=True, dynamic_ncols=True)
        self.bar.update(max(0, round(fraction * self.TICKS) - self.bar.n))
        self.bar.set_postfix_str(message[-70:], refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Command(BaseCommand):
    help = "Train a counterfactual generator (baseline, expert, or expert with active learning) on a data set."

    def add_arguments(self, parser):
        parser.add_argument("--dataset", help="name of a registered Dataset (not needed with --resume)")
        parser.add_argument("--variant", choices=TrainingRun.Variant.values, default="baseline")
        parser.add_argument("--preset", default="cpu-64", help="test-32, cpu-64 or paper-192")
        parser.add_argument("--steps", help="steps of every stage (N) or per stage (hvae=2000,counterfactual=500)")
        parser.add_argument("--budget", type=float, help="wall-clock budget in seconds, shared by the stages")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--name", help="run name (default: dataset-variant-preset-seed-random)")
        parser.add_argument("--resume", action="store_true", help="continue the run --name where it stopped")
        parser.add_argument("--background", action="store_true", help="queue a background job and return")
        parser.add_argument(
            "--create-only", action="store_true", help="record the run without training it (then torchrun ... --resume)"
        )
        parser.add_argument("--al-rounds", type=int, default=3, help="active-learning rounds (expert-al)")
        parser.add_argument("--al-fraction", type=float, default=0.1, help="share of the training set added per round")

    def handle(self, *args, **opts):
        try:
            run = self.find_or_create_run(opts)
            if opts["create_only"]:
                self.stdout.write(f"run {run.name} created; train it with --name {run.name} --resume")
                return
            request = TrainingRequest(run=run.name, resume=opts["resume"])
            if opts["background"]:
                job = runs.start_training_job(request)
                self.stdout.write(f"run {run.name}: queued job {job.pk}")
                return
            self.stdout.write(f"run {run.name} ({run.variant}, preset {run.preset}, seed {run.seed}) on {run.dataset}")
            bars = StageBars(self.stderr) if training.is_main_process() else None
            try:
                run = training.run_training(request, progress=bars)
            finally:
                if bars is not None:
                    bars.close()
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except Exception as exc:
            raise CommandError(f"training failed: {type(exc).__name__}: {exc}") from exc
        self.stdout.write(self.style.SUCCESS(f"run {run.name} succeeded; final checkpoint {run.checkpoints['final']}"))
        if run.training_warning:
            self.stdout.write(self.style.WARNING(run.training_warning))

    def find_or_create_run(self, opts):
        if opts["resume"]:
            if not opts["name"]:
                raise ValueError("--resume needs --name of the run to continue")
            return runs.find_run(opts["name"])
        if not opts["dataset"]:
            raise ValueError("--dataset is required for a new run")
        return runs.create_training_run(
            runs.find_dataset(opts["dataset"]),
            opts["variant"],
            opts["preset"],
            seed=opts["seed"],
            name=opts["name"],
            steps=opts["steps"],
            budget=opts["budget"],
            al_rounds=opts["al_rounds"],
            al_fraction=opts["al_fraction"],
        )
