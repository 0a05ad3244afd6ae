from django.core.management.base import BaseCommand

from jobs.runner import reap_stale_jobs


class Command(BaseCommand):
    help = "Mark running jobs whose worker stopped sending heartbeats as failed."

    def add_arguments(self, parser):
        parser.add_argument(
            "--stale-after", type=float, default=None, help="seconds without heartbeat (default: JOB_STALE_AFTER)"
        )

    def handle(self, *args, stale_after=None, **options):
        reaped = reap_stale_jobs(stale_after=stale_after)
        self.stdout.write(f"{reaped} stale job(s) marked failed")
