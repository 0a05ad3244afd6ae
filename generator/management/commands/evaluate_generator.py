"""`manage.py evaluate_generator`: evaluate a run and store its metrics, or compare evaluated runs side by side."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from generator.services import evaluation, reports, runs
from generator.services.requests import EvaluationRequest
from jobs import runner


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
            request = EvaluationRequest(
                runs=opts["compare"] or [opts["run"]],
                checkpoint=opts["checkpoint"],
                n=opts["n"],
                seed=opts["seed"],
                n_boot=opts["n_boot"],
                json_path=opts["json"],
                figures_dir=opts["figures"],
                expert=opts["expert"],
                compare=bool(opts["compare"]),
                compare_dir=opts["out"],
            )
            runs_asked = [runs.find_run(name) for name in request.runs]
            if opts["background"]:
                job = runner.enqueue("evaluate_generator", **request.to_params())
                self.stdout.write(f"queued job {job.pk}")
                return
            for run in runs_asked:
                if request.compare and not run.metrics:
                    self.stdout.write(f"{run.name} has no metrics yet: evaluating it first")
            with tqdm(total=1000, desc="evaluation", file=self.stderr) as bar:

                def progress(fraction, message):
                    bar.update(max(0, round(fraction * 1000) - bar.n))
                    bar.set_postfix_str(message[-60:], refresh=False)

                outcome = evaluation.evaluate(request, progress=progress)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if outcome["comparison"]:
            self.stdout.write(Path(outcome["comparison"]["markdown"]).read_text())
            folder = Path(outcome["comparison"]["markdown"]).parent
            self.stdout.write(self.style.SUCCESS(f"comparison written to {folder}"))
            return
        (run,) = runs_asked
        run.refresh_from_db()
        labels = {reports.model_label(run, label) for label in outcome["evaluated"][run.name]}
        for row in reports.metrics_rows(run):
            if row["Model"] in labels:
                self.stdout.write("  " + "; ".join(f"{k}: {v}" for k, v in row.items()))
        folder = runs.run_directory(run) / "evaluation"
        evaluated = ", ".join(outcome["evaluated"][run.name])
        self.stdout.write(self.style.SUCCESS(f"evaluated {evaluated}; reports in {folder}"))
