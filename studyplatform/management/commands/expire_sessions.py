from django.core.management.base import BaseCommand

from studyplatform import services


class Command(BaseCommand):
    help = "Time out every session idle for longer than its study's time limit (run it every few minutes)."

    def handle(self, **options):
        count = services.expire_idle_sessions()
        self.stdout.write(f"{count} session(s) timed out")
