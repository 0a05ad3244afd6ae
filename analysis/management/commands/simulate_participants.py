"""Simulated participants who take a study through the real participant JSON API.

Each bot starts a session with consent, reads the instructions of each block and answers every trial the server
serves, exactly as a custom front end would. What it answers comes from the behaviour profile in analysis/simulate.py;
to know which image it is looking at (the API never says), the bot asks the database, so a dry run must share the
server's database even when it talks to the server over HTTP (--base-url). Every bot is flagged as simulated
(`Participant.simulated`), so the export marks its rows and the analysis keeps it apart from real participants.
"""

import time

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.test import Client
from tqdm import tqdm

from analysis.simulate import Profile, answer_block1, answer_block2_final, answer_block2_first, load_profile, new_reader
from studycolumns import questions
from studyplatform import services
from studyplatform.models import Participant, Stimulus, Study


class InProcessApi:
    """The participant API called inside this process (no server needed)."""

    def __init__(self):
        hosts = [host.lstrip(".") for host in settings.ALLOWED_HOSTS if host not in ("*", "")]
        self.client = Client(HTTP_HOST=hosts[0] if hosts else "testserver")

    def call(self, method, path, payload=None):
        if method == "GET":
            response = self.client.get(path)
        else:
            response = self.client.post(path, payload or {}, content_type="application/json")
        return response.status_code, response.json()


class HttpApi:
    """The participant API of a running server."""

    def __init__(self, base_url):
        import requests

        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()

    def call(self, method, path, payload=None):
        response = self.session.request(method, self.base_url + path, json=payload, timeout=30)
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text[:200]}
        return response.status_code, body


class BotFailed(Exception):
    pass


def what_is_shown(token, trial_id):
    """The hidden facts of a trial (correct answer, image source, model), read from the participant's plan."""
    plan = Participant.objects.values_list("plan", flat=True).get(token=token)
    trial = next(t for t in plan if t["id"] == trial_id)
    if trial["phase"] == "attention":
        return {"truth": trial["expected"], "source": None, "cf_model": None, "case": None}
    stimulus = Stimulus.objects.select_related("case").get(pk=trial["stimulus"])
    return {
        "truth": stimulus.condition,
        "source": stimulus.source,
        "cf_model": trial.get("cf_model") or None,
        "case": stimulus.case.label,
    }


def run_bot(api, slug, external_id, profile, rng):
    """Take one whole session; returns the number of requests made."""
    status, step = api.call(
        "POST", "/api/participant/sessions/", {"study": slug, "consent": True, "prolific_pid": external_id}
    )
    if status not in (200, 201):
        raise BotFailed(f"start refused ({status}): {step.get('detail')}")
    token, reader, first_answers, requests_made = step["token"], new_reader(rng, profile), {}, 1
    # Flagged before the first answer, so that even a bot that fails half-way never passes for a real reader.
    services.mark_simulated(Participant.objects.get(token=token))
    study = Study.objects.get(slug=slug)
    while step["state"] in ("instructions", "trial"):
        if step["state"] == "instructions":
            status, step = api.call("POST", f"/api/participant/{token}/begin/", {"block": step["block"]})
        else:
            trial = step["trial"]
            shown = what_is_shown(token, trial["id"])
            payload = {"trial": trial["id"], **_answer(rng, profile, reader, trial, shown, first_answers)}
            # a required question the reader model has no behaviour for gets the table's example answer
            payload = questions.with_required_examples(payload, trial["phase"], study)
            status, body = api.call("POST", f"/api/participant/{token}/answers/", payload)
            step = body.get("next", body)
        requests_made += 1
        if status not in (200, 201):
            raise BotFailed(f"{external_id}: request refused ({status}): {step.get('detail')}")
    if step["state"] != "complete":
        raise BotFailed(f"{external_id}: session ended as {step['status']}")
    return requests_made


def _answer(rng, profile, reader, trial, shown, first_answers):
    rt_ms = int(rng.exponential(profile.rt_mean_ms)) + 500
    if trial["phase"] == "attention":
        return {"diagnosis": shown["truth"], "rt_ms": rt_ms}
    if trial["phase"] == "block1":
        answer = answer_block1(rng, profile, reader, shown["source"], shown["truth"])
        return {
            "diagnosis": answer["diagnosis"],
            "realness": answer["realness"],
            "slider_moved": True,
            "reasons": answer["reasons"],
            "rt_ms": answer["rt_ms"],
        }
    if trial["phase"] == "pre":
        answer = answer_block2_first(rng, profile, reader, shown["truth"])
        first_answers[shown["case"]] = answer
    else:
        first = first_answers[shown["case"]]
        answer = answer_block2_final(rng, profile, shown["cf_model"], shown["truth"], first)
    return {"diagnosis": answer["diagnosis"], "confidence": answer["confidence"], "rt_ms": rt_ms}


class Command(BaseCommand):
    help = (
        "Run N simulated participants through a study's participant JSON API (dry run and load test). "
        "The study must be open."
    )

    def add_arguments(self, parser):
        parser.add_argument("study_slug")
        parser.add_argument("--n", type=int, default=10, help="number of simulated participants")
        parser.add_argument("--profile", metavar="FILE", help="JSON behaviour profile (see docs/analysis.md)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--base-url", help="talk to a running server over HTTP instead of in-process")
        parser.add_argument("--id-prefix", default="sim", help="prefix of the bots' participant ids")

    def handle(self, *args, **options):
        if options["n"] < 1:
            raise CommandError("--n must be at least 1")
        study = Study.objects.filter(slug=options["study_slug"]).first()
        if study is None:
            raise CommandError(f"no study with the slug {options['study_slug']!r}")
        if study.status != Study.Status.OPEN:
            raise CommandError(f"study {study.slug} is {study.status}; open it before simulating participants")
        try:
            profile = load_profile(options["profile"]) if options["profile"] else Profile()
        except (OSError, ValueError) as error:
            raise CommandError(str(error)) from error
        api = HttpApi(options["base_url"]) if options["base_url"] else InProcessApi()
        rng = np.random.default_rng(options["seed"])
        completed, failures, requests_made, started = 0, [], 0, time.perf_counter()
        for number in tqdm(range(options["n"]), desc="participants", disable=options["verbosity"] < 1):
            external_id = f"{options['id_prefix']}-{options['seed']}-{number + 1:04d}"
            try:
                requests_made += run_bot(api, study.slug, external_id, profile, rng)
                completed += 1
            except BotFailed as error:
                failures.append(str(error))
        elapsed = time.perf_counter() - started
        self.stdout.write(
            f"{completed} of {options['n']} simulated participants completed {study.slug}: {requests_made} requests "
            f"in {elapsed:.1f} s ({1000 * elapsed / max(1, requests_made):.1f} ms per request)"
        )
        for failure in failures:
            self.stderr.write(failure)
        if failures:
            raise CommandError(f"{len(failures)} simulated participant(s) failed")
