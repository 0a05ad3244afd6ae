"""`manage.py import_dataset`: load, validate and register a data set (phantom, NIH ChestX-ray8/14 or MIMIC-CXR)."""

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from generator.data import COFINDING_RULES, DataError
from generator.models import Dataset
from generator.registry import register_dataset


class Command(BaseCommand):
    help = "Register a data set: reads it from its native layout, checks it, and records its counts and statistics."

    def add_arguments(self, parser):
        parser.add_argument("--kind", required=True, choices=Dataset.Kind.values)
        parser.add_argument("--root", default="", help="data set folder (for phantoms: an optional cache folder)")
        parser.add_argument("--resolution", type=int, default=64)
        parser.add_argument("--name", help="unique name (default: derived from kind, resolution, n and seed)")
        parser.add_argument("--n", type=int, help="phantom: number of images (default 10000)")
        parser.add_argument("--seed", type=int, default=0, help="phantom sampling and train/valid/test split seed")
        parser.add_argument("--views", default="PA", help="real data: frontal views, comma-separated (PA or PA,AP)")
        parser.add_argument("--cofinding-rule", choices=COFINDING_RULES, help="real data: effusion with pneumonia")
        parser.add_argument("--mimic-iv-root", help="mimic: folder of MIMIC-IV patients/admissions/labevents")

    def handle(self, *args, **opts):
        kind = opts["kind"]
        options = {"seed": opts["seed"]}
        if kind.startswith("phantom"):
            options["n"] = opts["n"] or 10000
        else:
            if opts["n"] is not None:
                raise CommandError("--n only applies to phantom data sets")
            options["views"] = [v.strip().upper() for v in opts["views"].split(",") if v.strip()]
            if opts["cofinding_rule"]:
                options["cofinding_rule"] = opts["cofinding_rule"]
            if opts["mimic_iv_root"]:
                if kind != "mimic":
                    raise CommandError("--mimic-iv-root only applies to --kind mimic")
                options["mimic_iv_root"] = opts["mimic_iv_root"]

        with tqdm(desc="reading images", unit="img", file=self.stderr, disable=kind.startswith("phantom")) as bar:

            def progress(done, total):
                bar.total = total
                bar.update(done - bar.n)

            try:
                dataset = register_dataset(
                    kind=kind,
                    root=opts["root"],
                    resolution=opts["resolution"],
                    name=opts["name"],
                    options=options,
                    progress=progress,
                )
            except DataError as error:
                raise CommandError(str(error)) from error

        counts = ", ".join(f"{split} {n}" for split, n in dataset.split_counts.items())
        labels = ", ".join(f"{label} {n}" for label, n in dataset.label_counts["total"].items())
        self.stdout.write(self.style.SUCCESS(f"registered {dataset.name}: {counts}; {labels}"))
