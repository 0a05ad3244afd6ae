"""`manage.py phantom_contact_sheet`: PNG contact sheets of phantom samples and their true counterfactuals."""

from django.core.management.base import BaseCommand, CommandError

from generator.data.contact_sheet import write_phantom_contact_sheets
from generator.data.graph import GRAPHS


class Command(BaseCommand):
    help = "Write one PNG per disease class: phantom samples beside their true counterfactuals and lesion masks."

    def add_arguments(self, parser):
        parser.add_argument("--out", required=True, help="folder for phantom-<class>.png")
        parser.add_argument("--n", type=int, default=6, help="samples per class (rows)")
        parser.add_argument("--resolution", type=int, default=128)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--graph", choices=sorted(GRAPHS), default="mimic")

    def handle(self, *args, **opts):
        if not 16 <= opts["resolution"] <= 512:
            raise CommandError("--resolution must be between 16 and 512")
        try:
            paths = write_phantom_contact_sheets(
                opts["out"], opts["n"], opts["resolution"], opts["seed"], opts["graph"]
            )
        except ValueError as error:
            raise CommandError(str(error)) from error
        for path in paths:
            self.stdout.write(f"wrote {path}")
