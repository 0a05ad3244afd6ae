"""`manage.py generate_counterfactuals`: counterfactual images of real images, with a manifest for the study."""

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from generator.services import counterfactuals, runs
from generator.services.requests import CounterfactualRequest
from jobs import runner


class Command(BaseCommand):
    help = "Write counterfactuals of data-set images (--ids) or image files (--images) under do(...) with a manifest."

    def add_arguments(self, parser):
        parser.add_argument("run", help="training run name")
        parser.add_argument("--dataset", help="data set the --ids belong to (default: the run's)")
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--ids", nargs="+", help="image ids of the data set")
        source.add_argument("--images", nargs="+", help="image files (parents are read by the run's predictors)")
        parser.add_argument(
            "--do",
            action="append",
            required=True,
            help="intervention, e.g. disease=healthy; repeat for several (every image gets each)",
        )
        parser.add_argument("--samples", type=int, default=1, help="posterior samples averaged per counterfactual")
        parser.add_argument("--out", help="output folder (default: under the run's artifacts)")
        parser.add_argument("--checkpoint", help="checkpoint label, e.g. round-2 (default: the final model)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--expert", help="xrv weights name or file for the expert probabilities")
        parser.add_argument("--background", action="store_true", help="queue a background job and return")

    def handle(self, *args, **opts):
        try:
            request = CounterfactualRequest.every_image_under_each(
                opts["run"],
                opts["do"],
                ids=opts["ids"] or [],
                images=opts["images"] or [],
                dataset=opts["dataset"],
                out_dir=opts["out"],
                samples=opts["samples"],
                checkpoint=opts["checkpoint"],
                seed=opts["seed"],
                expert=opts["expert"],
            )
            runs.find_run(request.run)
            if request.dataset:
                runs.find_dataset(request.dataset)
            if opts["background"]:
                job = runner.enqueue("generate_counterfactuals", **request.to_params())
                self.stdout.write(f"queued job {job.pk}")
                return
            count = len(request.do)
            with tqdm(total=count, desc="counterfactuals", file=self.stderr) as bar:
                folder, manifest = counterfactuals.generate_counterfactuals(
                    request, progress=lambda fraction, message: bar.update(round(fraction * count) - bar.n)
                )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"{len(manifest['items'])} images and manifest.json in {folder}"))
