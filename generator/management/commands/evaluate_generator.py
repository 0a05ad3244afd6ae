"""`manage.py evaluate_generator`: evaluate a run and store its metrics, or compare evaluated runs side by side."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from tqdm import tqdm

from generator import services


class Command(BaseCommand):
    help = "Evaluate a training run (effectiveness, composition, reversibility, FID/SSIM, phantom errors)."

    def add_arguments(self, parser):
        parser.add_argument("run", nargs="?", help="training run name")
        parser.add_argument("--checkpoint", help="round-N, counterfactual or all (default: the final model)")
        parser.add_argument("--n", type=int, default=256, help="test images evaluated")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the 95%% intervals")
        parser.add_argument("--json", help="write all results to this JSON file")
        parser.add_argument("--figures", help="write counterfactual figures into this folder")
        parser.add_argument("--expert", help="xrv weights name or file of the expert (default: pretrained or trained)")
        parser.add_argument("--compare", nargs="+", metavar="RUN", help="write the side-by-side table of these runs")
        parser.add_argument("--out", help="folder of the --compare table (default: ARTIFACTS_ROOT/comparisons/...)")
        parser.add_argument("--background", action="store_true", help="queue a background job and return")

    def handle(self, *args, **opts):
        if bool(opts["run"]) == bool(opts["compare"]):
            raise CommandError("give either a RUN to evaluate or --compare RUN_A RUN_B ...")
        try:
            if opts["compare"]:
                self.compare(opts)
            else:
                self.evaluate(opts)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

    def evaluate(self, opts):
        run = services.find_run(opts["run"])
        if opts["background"]:
            job = self.enqueue(
                runs=[run.name],
                checkpoint=opts["checkpoint"],
                n=opts["n"],
                seed=opts["seed"],
                json_path=opts["json"],
                figures_dir=opts["figures"],
                n_boot=opts["n_boot"],
            )
            self.stdout.write(f"queued job {job.pk}")
            return
        with tqdm(total=1000, desc="evaluation", file=self.stderr) as bar:

            def progress(fraction, message):
                bar.update(max(0, round(fraction * 1000) - bar.n))
                bar.set_postfix_str(message[-60:], refresh=False)

            results = services.evaluate_run(
                run,
                opts["checkpoint"],
                n=opts["n"],
                seed=opts["seed"],
                json_path=opts["json"],
                figures_dir=opts["figures"],
                expert=opts["expert"],
                n_boot=opts["n_boot"],
                progress=progress,
            )
        for row in services.metrics_rows(run):
            if any(row["Model"] == services.model_label(run, label) for label in results):
                self.stdout.write("  " + "; ".join(f"{k}: {v}" for k, v in row.items()))
        folder = services.run_directory(run) / "evaluation"
        self.stdout.write(self.style.SUCCESS(f"evaluated {', '.join(results)}; reports in {folder}"))

    def compare(self, opts):
        runs = [services.find_run(name) for name in opts["compare"]]
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        out = opts["out"] or str(Path(settings.ARTIFACTS_ROOT) / "comparisons" / stamp)
        if opts["background"]:
            job = self.enqueue(
                runs=[run.name for run in runs], n=opts["n"], seed=opts["seed"], n_boot=opts["n_boot"], compare_dir=out
            )
            self.stdout.write(f"queued job {job.pk}")
            return
        for run in runs:
            if not run.metrics:
                self.stdout.write(f"{run.name} has no metrics yet: evaluating it first")
                self.evaluate({**opts, "run": run.name, "json": None, "figures": None})
                run.refresh_from_db()
        paths = services.compare_runs(runs, out)
        self.stdout.write(Path(paths["markdown"]).read_text())
        self.stdout.write(self.style.SUCCESS(f"comparison written to {out}"))

    def enqueue(self, **params):
        import generator.tasks  # noqa: F401  (registers the job kinds)
        from studyplatform import jobs

        return jobs.enqueue("evaluate_generator", **params)
