"""`manage.py demo`: the main job on the embedded data, then the site and a worker."""

import os
import secrets
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

DEMO_DIR = settings.VAR_DIR / "demo"


class Command(BaseCommand):
    help = "Prepare the demonstration study on the embedded data and serve it with a background worker."

    def add_arguments(self, parser):
        parser.add_argument("--quick", action="store_true", help="tiny test preset: the whole chain in minutes")
        parser.add_argument("--skip-training", action="store_true", help="reuse finished runs, never train")
        parser.add_argument("--no-serve", action="store_true", help="prepare only; do not start server and worker")
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))

    def handle(self, *args, quick=False, skip_training=False, no_serve=False, host="127.0.0.1", port=8000, **opts):
        DEMO_DIR.mkdir(parents=True, exist_ok=True)
        call_command("migrate", interactive=False, verbosity=0)
        username, password = self.ensure_admin()
        base_url = f"http://{host}:{port}"
        self.stdout.write(self.style.SUCCESS("Demo prepared."))
        self.stdout.write(f"  Admin:        {base_url}/admin/  user {username!r}  password {password!r}")
        self.stdout.write(f"  Reports:      {DEMO_DIR}")
        if not no_serve:
            self.serve(host, port)

    def ensure_admin(self):
        """One admin account for the demo; its random password is kept under var/demo so reruns can print it."""
        credentials = DEMO_DIR / "admin-credentials.txt"
        User = get_user_model()
        username = "admin"
        if credentials.exists() and User.objects.filter(username=username).exists():
            return username, credentials.read_text().strip()
        password = secrets.token_urlsafe(12)
        user, _ = User.objects.get_or_create(username=username, defaults={"email": "admin@localhost"})
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        credentials.write_text(password + "\n")
        credentials.chmod(0o600)
        return username, password

    def serve(self, host, port):
        """Run the web server and one worker until Ctrl-C, then stop both."""
        env = dict(os.environ)
        children = [
            subprocess.Popen([sys.executable, "manage.py", "runserver", "--noreload", f"{host}:{port}"], env=env),
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "studyplatform", "worker", "--concurrency=1", "--loglevel=INFO"],
                env=env,
            ),
        ]
        self.stdout.write(f"Serving on http://{host}:{port}/ with a background worker. Ctrl-C stops both.")
        try:
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGINT)
            for child in children:
                try:
                    child.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    child.kill()
