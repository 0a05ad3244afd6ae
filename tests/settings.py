"""Test settings: the real settings module, with a file-backed SQLite test database (so a worker process can see
it) and fast password hashing. DATABASE_URL switches the whole suite to PostgreSQL."""

import os

os.environ.setdefault("VAR_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), "var", "test"))

from studyplatform.settings import *  # noqa: E402,F403
from studyplatform.settings import DATABASES, VAR_DIR  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")}
VAR_DIR.mkdir(parents=True, exist_ok=True)
# The suite starts many sessions from one address in one process; tests of the limits set their own.
SESSION_START_LIMITS = {"per_client": 100_000, "per_study": 100_000, "window_seconds": 3600, "resume_code_attempts": 10}
