from django.core.management.base import BaseCommand, CommandError

from studyplatform import export, services
from studyplatform.models import Study


class Command(BaseCommand):
    help = "Write a study's answers (tidy, one row per answer) and participants as CSV files."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--out", required=True, help="folder for <slug>-answers.csv and <slug>-participants.csv")
        parser.add_argument("--raw-ids", action="store_true", help="write raw Prolific ids instead of keyed hashes")

    def handle(self, slug, out, raw_ids, **options):
        study = Study.objects.filter(slug=slug).first()
        if study is None:
            raise CommandError(f"no study with slug {slug!r}")
        result = export.export_study(study, out, raw_ids=raw_ids)
        if raw_ids:
            services.audit(None, "export.raw_ids", study, study, out=str(out))
        self.stdout.write(
            f"{result['n_answers']} answers -> {result['answers']}\n"
            f"{result['n_participants']} participants -> {result['participants']}"
        )
