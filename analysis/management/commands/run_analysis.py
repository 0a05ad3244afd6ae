from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from analysis import frames
from analysis.report import FORMATS, analyse_answers, summary_lines, write_report

STAGES = ("block 1", "block 2", "mixed models")


class Command(BaseCommand):
    requires_system_checks = []
    help = (
        "Analyse a reader study from the database (STUDY_SLUG) or from the exported answers CSV (--from-csv): "
        "writes analysis.json, CSV tables, PNG figures and a self-contained report.html."
    )

    def add_arguments(self, parser):
        parser.add_argument("study_slug", nargs="?", help="slug of the study in the database")
        parser.add_argument("--from-csv", metavar="ANSWERS.csv", help="analyse an exported answers CSV instead")
        parser.add_argument("--participants", metavar="PARTICIPANTS.csv", help="the exported participants CSV")
        parser.add_argument("--out", metavar="DIR", help="output folder (default var/analysis/<study or file name>)")
        parser.add_argument("--format", default=",".join(FORMATS), help="comma-separated subset of json,csv,html")
        completeness = parser.add_mutually_exclusive_group()
        completeness.add_argument(
            "--exclude-incomplete", dest="include_incomplete", action="store_false", help="only completed (default)"
        )
        completeness.add_argument("--include-incomplete", dest="include_incomplete", action="store_true")
        parser.add_argument("--no-models", action="store_true", help="skip the mixed-effects models (faster)")
        parser.add_argument(
            "--readers",
            choices=frames.READERS,
            default="real",
            help="whose answers: real participants (default), simulated ones (simulate_participants), or all (mixed)",
        )
        parser.set_defaults(include_incomplete=False)

    def handle(self, *args, **options):
        formats = [item.strip() for item in options["format"].split(",") if item.strip()]
        unknown = sorted(set(formats) - set(FORMATS))
        if unknown or not formats:
            raise CommandError(
                f"--format takes a comma-separated subset of {','.join(FORMATS)}; got {options['format']!r}"
            )
        answers, participants, label, source = self._load(options)
        out = Path(options["out"] or Path(settings.VAR_DIR) / "analysis" / label)

        with tqdm(total=len(STAGES), desc="analysis", unit="stage", disable=options["verbosity"] < 1) as bar:

            def progress(stage):
                bar.set_postfix_str(stage)
                bar.update(1)

            try:
                document, tables = analyse_answers(
                    answers,
                    participants,
                    include_incomplete=options["include_incomplete"],
                    settings={"input": source},
                    fit_models=not options["no_models"],
                    progress=progress,
                    readers=options["readers"],
                )
            except frames.FrameError as error:
                raise CommandError(str(error)) from error
        written = write_report(document, tables, out, formats)
        for line in summary_lines(document):
            self.stdout.write(line)
        self.stdout.write(self.style.SUCCESS(f"Wrote {len(written)} files to {out}"))

    def _load(self, options):
        slug, csv_path = options["study_slug"], options["from_csv"]
        if bool(slug) == bool(csv_path):
            raise CommandError("give either a STUDY_SLUG or --from-csv ANSWERS.csv (exactly one)")
        try:
            if csv_path:
                answers = frames.read_answers_csv(csv_path)
                participants = (
                    frames.read_participants_csv(options["participants"]) if options["participants"] else None
                )
                return answers, participants, Path(csv_path).stem, f"CSV {csv_path}"
            if options["participants"]:
                raise CommandError("--participants only goes with --from-csv; the database has the participants")
            answers, participants = frames.answers_from_study(slug)
            return answers, participants, slug, f"study {slug}"
        except frames.FrameError as error:
            raise CommandError(str(error)) from error
