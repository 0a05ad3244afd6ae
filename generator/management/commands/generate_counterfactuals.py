"""`manage.py generate_counterfactuals`: counterfactual images of real images, with a manifest for the study."""

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from generator import services


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
        sources = opts["ids"] or opts["images"]
        # Every image under every intervention, image by image.
        expanded = [source for source in sources for _ in opts["do"]]
        interventions = [do for _ in sources for do in opts["do"]]
        key = "ids" if opts["ids"] else "image_files"
        try:
            run = services.find_run(opts["run"])
            dataset = services.find_dataset(opts["dataset"]) if opts["dataset"] else None
            if opts["background"]:
                import generator.tasks  # noqa: F401
                from studyplatform import jobs

                if dataset is not None and dataset != run.dataset:
                    raise ValueError("--background uses the run's own data set; leave out --dataset")
                job = jobs.enqueue(
                    "generate_counterfactuals",
                    run_id=str(run.pk),
                    do=interventions,
                    ids=expanded if key == "ids" else None,
                    images=expanded if key == "image_files" else None,
                    out_dir=opts["out"],
                    samples=opts["samples"],
                    checkpoint=opts["checkpoint"],
                    seed=opts["seed"],
                    expert=opts["expert"],
                )
                self.stdout.write(f"queued job {job.pk}")
                return
            with tqdm(total=len(expanded), desc="counterfactuals", file=self.stderr) as bar:
                folder, manifest = services.generate_counterfactuals(
                    run,
                    interventions,
                    **{key: expanded},
                    dataset=dataset,
                    out_dir=opts["out"],
                    samples=opts["samples"],
                    checkpoint=opts["checkpoint"],
                    seed=opts["seed"],
                    expert=opts["expert"],
                    progress=lambda fraction, message: bar.update(round(fraction * len(expanded)) - bar.n),
                )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"{len(manifest['items'])} images and manifest.json in {folder}"))
