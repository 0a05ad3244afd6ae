"""Simulated participants for load runs: each bot takes a whole study session through the participant JSON API over
HTTP, fetching every image it is shown the way a browser would, and remembers every answer it sent.

Used by benchmarks/bench_load.py (100 bots against gunicorn) and tests/faults/test_load_short.py (a few bots against the
test server). The bots only see what a participant's browser sees; afterwards `stored_answers` reads what the database
holds (in the caller's Django process) and `stored_vs_sent` compares it with `Bot.sent`.

Request types timed separately: start (consent + new session), next (what to show), begin (start a block),
answer (a first submission), replay (the same submission sent again, as a double click does) and image.
"""

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
REQUEST_TYPES = ("start", "next", "begin", "answer", "replay", "image")


class Recorder:
    """Latency samples per request type and the failures, shared by all bots (thread-safe)."""

    def __init__(self):
        self.samples = defaultdict(list)
        self.errors = []
        self.lock = threading.Lock()
        self.started = self.finished = None

    def add(self, kind, seconds, status):
        with self.lock:
            self.samples[kind].append(seconds)
            if status >= 500:
                self.errors.append(f"{kind}: HTTP {status}")

    def fail(self, message):
        with self.lock:
            self.errors.append(message)

    def summary(self):
        """{kind: {n, p50_ms, p95_ms, p99_ms, max_ms}} plus totals."""
        rows = {}
        for kind in REQUEST_TYPES:
            values = sorted(self.samples.get(kind, []))
            if values:
                rows[kind] = {
                    "n": len(values),
                    "p50_ms": 1000 * percentile(values, 50),
                    "p95_ms": 1000 * percentile(values, 95),
                    "p99_ms": 1000 * percentile(values, 99),
                    "max_ms": 1000 * values[-1],
                }
        total = sum(len(v) for v in self.samples.values())
        elapsed = (self.finished or time.monotonic()) - (self.started or time.monotonic())
        return {"requests": total, "seconds": elapsed, "throughput": total / elapsed if elapsed else 0.0, "per": rows}


def percentile(sorted_values, q):
    """Linear-interpolation percentile of an already sorted list."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    position = (len(sorted_values) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


class Bot:
    """One participant. `sent` maps trial id -> the answer fields sent for it (what the database must hold)."""

    def __init__(
        self,
        base_url,
        slug,
        external_id,
        recorder,
        seed,
        think_s=0.0,
        replay_rate=0.1,
        fetch_images=True,
        deadline=None,
    ):
        self.base_url = base_url.rstrip("/")
        # A time-limited run: at this time.monotonic() the bot sends nothing more (it never leaves a request unread).
        self.deadline = deadline
        self.acknowledged = 0
        self.slug, self.external_id = slug, external_id
        self.recorder = recorder
        self.rng = random.Random(seed)
        self.think_s, self.replay_rate, self.fetch_images = think_s, replay_rate, fetch_images
        self.http = requests.Session()
        self.token = None
        self.sent = {}
        self.completion_code = None

    def call(self, kind, method, path, payload=None, expect=(200, 201)):
        started = time.perf_counter()
        response = self.http.request(method, self.base_url + path, json=payload, timeout=60)
        self.recorder.add(kind, time.perf_counter() - started, response.status_code)
        if response.status_code not in expect:
            raise RuntimeError(f"{self.external_id} {kind} {path}: HTTP {response.status_code} {response.text[:200]}")
        return response

    def think(self):
        if self.think_s:
            time.sleep(self.rng.expovariate(1 / self.think_s))

    def answer_for(self, trial):
        answer = {"trial": trial["id"], "diagnosis": self.rng.choice(("healthy", "effusion", "pneumonia"))}
        answer["rt_ms"] = self.rng.randint(400, 20_000)
        if trial["phase"] == "block1":
            start = trial.get("slider_start", 50)
            answer["realness"] = self.rng.choice([v for v in range(1, 101) if v != start])
            answer["slider_moved"] = True
            answer["reasons"] = sorted(self.rng.sample(range(1, 8), self.rng.randint(0, 3)))
        elif trial["phase"] in ("pre", "post"):
            answer["confidence"] = self.rng.randint(1, 6)
        return answer

    def run(self):
        """Take the whole session; returns the final step. Raises on any unexpected answer from the server."""
        body = {"study": self.slug, "consent": True, "prolific_pid": self.external_id, "session_id": "load"}
        step = self.call("start", "POST", "/api/participant/sessions/", body).json()
        self.token = step["token"]
        seen_images = set()
        while step["state"] in ("instructions", "trial"):
            self.think()
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return step
            if step["state"] == "instructions":
                path = f"/api/participant/{self.token}/begin/"
                step = self.call("begin", "POST", path, {"block": step["block"]}).json()
                continue
            trial = step["trial"]
            if self.fetch_images:
                for url in trial["images"] + step.get("preload", []):
                    if url not in seen_images:
                        seen_images.add(url)
                        self.call("image", "GET", url, expect=(200,))
            answer = self.answer_for(trial)
            self.sent[trial["id"]] = {k: v for k, v in answer.items() if k not in ("trial", "slider_moved")}
            reply = self.call("answer", "POST", f"/api/participant/{self.token}/answers/", answer, expect=(201,))
            self.acknowledged += 1
            if self.rng.random() < self.replay_rate:
                replay = self.call(
                    "replay", "POST", f"/api/participant/{self.token}/answers/", answer, expect=(200,)
                ).json()
                if replay["created"] is not False:
                    raise RuntimeError(f"{self.external_id}: a replayed answer was stored again")
            step = reply.json()["next"]
            if self.rng.random() < 0.05:  # now and then the page is reloaded
                step = self.call("next", "GET", f"/api/participant/{self.token}/").json()
        self.completion_code = step.get("completion_code")
        return step


def run_bots(
    base_url, slug, n_bots, concurrency=None, think_s=0.0, replay_rate=0.1, seed=0, fetch_images=True, duration_s=None
):
    """Run `n_bots` bots at once (threads); returns (bots, recorder). Failures are recorded, not raised.

    With `duration_s`, the bots stop sending after that many seconds wherever they are in their sessions (each one
    still reads the reply to its last request), so every answer a bot sent was acknowledged or failed."""
    recorder = Recorder()
    deadline = time.monotonic() + duration_s if duration_s else None
    bots = [
        Bot(
            base_url,
            slug,
            f"loadbot{seed}x{i:04d}",
            recorder,
            seed * 100_003 + i,
            think_s,
            replay_rate,
            fetch_images,
            deadline,
        )
        for i in range(n_bots)
    ]

    def take(bot):
        try:
            bot.run()
        except Exception as error:  # every failure is a result of the run, reported by the caller
            recorder.fail(f"{bot.external_id}: {type(error).__name__}: {error}")

    recorder.started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency or n_bots) as pool:
        list(pool.map(take, bots))
    recorder.finished = time.monotonic()
    return bots, recorder


def stored_vs_sent(bots, stored_by_token):
    """Compare what the bots sent with what the database holds.

    `stored_by_token` maps a participant token to {trial id: answer fields} read from the database (one entry per
    Response row; a duplicated row shows up as a count above 1 in `duplicates`). Returns a dict of counts and a list
    of the first mismatches."""
    sent = lost = duplicated = changed = extra = 0
    problems = []
    for bot in bots:
        stored = stored_by_token.get(bot.token, {"answers": {}, "rows": 0})
        sent += len(bot.sent)
        duplicated += max(0, stored["rows"] - len(stored["answers"]))
        for trial_id, answer in bot.sent.items():
            if trial_id not in stored["answers"]:
                lost += 1
                problems.append(f"{bot.external_id}: trial {trial_id} lost")
            elif stored["answers"][trial_id] != answer:
                changed += 1
                problems.append(f"{bot.external_id}: trial {trial_id} stored {stored['answers'][trial_id]} != {answer}")
        extra += len(set(stored["answers"]) - set(bot.sent))
    return {
        "sent": sent,
        "lost": lost,
        "duplicated": duplicated,
        "changed": changed,
        "unexpected": extra,
        "problems": problems[:10],
    }


def stored_answers(tokens):
    """{token: {"answers": {trial id: answer fields}, "rows": number of Response rows}} from the database."""
    from studyplatform.models import Participant, Response

    stored = {}
    for participant in Participant.objects.filter(token__in=list(tokens)):
        trial_ids = {trial["sequence"]: trial["id"] for trial in participant.plan}
        rows = list(Response.objects.filter(participant=participant))
        answers = {}
        for row in rows:
            fields = {"diagnosis": row.diagnosis, "rt_ms": row.rt_ms}
            if row.phase == "block1":
                fields.update(realness=row.realness, reasons=list(row.reasons))
            elif row.phase in ("pre", "post"):
                fields["confidence"] = row.confidence
            answers[trial_ids[row.sequence]] = fields
        stored[participant.token] = {"answers": answers, "rows": len(rows)}
    return stored


class ServerProcess:
    """A gunicorn (or any WSGI command) serving the project on a free port, in its own process group."""

    def __init__(self, env, log_path, workers=4, port=None, threads=1):
        self.port = port or free_port()
        self.env, self.log_path, self.workers, self.threads = env, log_path, workers, threads
        self.process = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout=60):
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "studyplatform.wsgi:application",
            f"--bind=127.0.0.1:{self.port}",
            f"--workers={self.workers}",
            f"--threads={self.threads}",
            "--timeout=120",
            "--graceful-timeout=5",
        ]
        self.log = open(self.log_path, "a")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.close()
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log_path}")
            try:
                if requests.get(self.url + "/healthz", timeout=10).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout} s; see {self.log_path}")

    def kill(self):
        """SIGKILL the master and every worker: no request gets to finish, nothing gets to clean up."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        self.log.close()

    def stop(self):
        """SIGTERM: gunicorn lets the workers finish their requests and exits."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self.log.close()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
