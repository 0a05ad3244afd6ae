from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from studyplatform import services
from studyplatform.models import Study


class Command(BaseCommand):
    help = "Attach a generator's counterfactuals (a folder with manifest.json and PNGs) to a draft study's cases."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("manifest_dir")
        parser.add_argument("--model-role", choices=["baseline", "proposed"], help="overrides the manifest's role")

    def handle(self, slug, manifest_dir, model_role, **options):
        study = Study.objects.filter(slug=slug).first()
        if study is None:
            raise CommandError(f"no study with slug {slug!r}")
        try:
            result = services.import_counterfactual_manifest(study, manifest_dir, model_role=model_role)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(f"attached {len(result['attached'])}: {', '.join(result['attached'])}")
        if result["unmatched"]:
            self.stdout.write(
                f"no matching case for {len(result['unmatched'])} item(s): {', '.join(result['unmatched'])}"
            )
