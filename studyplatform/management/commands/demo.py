"""`manage.py demo`: the main job on the embedded data, end to end, then the site and a worker.

1. migrate and make an admin account (random password, printed);
2. register the bundled real NIH sample and a phantom data set;
3. train the baseline and the proposed (expert + active learning) generators on the real sample within a budget;
4. evaluate both and write the Table-1-style comparison and figures under var/demo/evaluation;
5. build a study of 12 Block-1 patients and 12 Block-2 cases from real images and both models' counterfactuals,
   open it, run simulated participants through the participant API and analyse their answers;
6. serve the study with a background worker and print the links once the site answers.

Every step reuses what a previous run finished, so a second `make demo` only re-runs the analysis before serving;
`--serve-only` serves a prepared demo at once. The port is checked before anything else, and SIGTERM or SIGHUP stop
the web server and the worker as Ctrl-C does.
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

DEMO_DIR = settings.VAR_DIR / "demo"
NIH_SAMPLE = settings.BASE_DIR / "fixtures" / "nih-cxr-sample"
# Split 50/10/40 at the patient level: the study's 24 cases must come from the held-out test split and pass the
# stimulus screening (the test split of an 80/10/10 split has 5 pneumonia images, one of them a child's).
NIH_SAMPLE_OPTIONS = {"views": ["PA", "AP"], "seed": 0, "fractions": [0.5, 0.1, 0.4]}
CONDITIONS = ("healthy", "effusion", "pneumonia")
# Seconds of training for both models together: a cap, not a target. Estimated from the stage times of single-thread
# phantom runs, the cpu-64 plan takes about 14 minutes for the baseline and 21 for the proposed model (expert and
# three active-learning rounds) on a quiet 2-core machine, inside the 40% / 60% shares.
DEFAULT_BUDGET = 2400


class Mode:
    """What differs between the full demo and the quick chain (tiny model, used as the CI smoke test)."""

    def __init__(self, quick, budget):
        self.quick = quick
        self.preset = "test-32" if quick else "cpu-64"
        self.resolution = 32 if quick else 64
        self.budget = budget
        # Shares of the training budget: the proposed model also trains its expert and fine-tunes per AL round. The
        # budget only caps the presets' step plans, which on a quiet 2-core machine are estimated to finish inside
        # their shares of the default (see DEFAULT_BUDGET); a busier machine reaches the cap and the summary says so.
        self.baseline_budget = 0.4 * budget
        self.proposed_budget = 0.6 * budget
        self.steps = {"parents": 40, "predictors": 40, "hvae": 60, "counterfactual": 30} if quick else None
        self.eval_images = 32 if quick else 128
        # The evaluation's own expert and predictors are trained once per data set (independent of both runs).
        self.eval_expert_steps = 40 if quick else 200
        self.eval_predictor_epochs = 2 if quick else 8
        self.participants = 30
        self.suffix = "-quick" if quick else ""
        self.study_slug = f"demo{self.suffix}"


class Command(BaseCommand):
    help = "Run the main job on the embedded data (train, evaluate, build and dry-run a study), then serve it."

    def add_arguments(self, parser):
        parser.add_argument("--quick", action="store_true", help="tiny test preset: the whole chain in minutes")
        parser.add_argument("--skip-training", action="store_true", help="reuse finished runs, never train")
        parser.add_argument("--no-serve", action="store_true", help="prepare only; do not start server and worker")
        parser.add_argument(
            "--serve-only",
            action="store_true",
            help="serve the demo an earlier run prepared: no training, evaluation, study building or analysis",
        )
        parser.add_argument(
            "--budget",
            type=float,
            default=float(os.environ.get("DEMO_BUDGET", DEFAULT_BUDGET)),
            help=f"cap in seconds on the training of both models together (env DEMO_BUDGET; default {DEFAULT_BUDGET})",
        )
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))

    def handle(
        self, *args, quick=False, skip_training=False, no_serve=False, serve_only=False, budget=DEFAULT_BUDGET, **o
    ):
        started = time.monotonic()
        host, port = o["host"], o["port"]
        if no_serve and serve_only:
            raise CommandError("--no-serve and --serve-only exclude each other")
        if not no_serve:
            # Before minutes of training: a busy port would only show once the links were printed.
            ensure_port_free(host, port)
        mode = Mode(quick or os.environ.get("DEMO") == "quick", budget)
        out = DEMO_DIR / ("quick" if mode.quick else "full")
        out.mkdir(parents=True, exist_ok=True)
        self.step("Database and admin account")
        call_command("migrate", interactive=False, verbosity=0)
        username, password = self.ensure_admin()
        if serve_only:
            study = self.prepared_study(mode)
            base_url = f"http://{host}:{port}"
            self.serve(host, port, ready=lambda: self.print_links(study, base_url, username, password, started))
            return

        self.step("Data sets")
        nih, _phantom = self.register_datasets(mode)

        self.step(f"Generators ({mode.preset}, budget {mode.budget:.0f} s)")
        baseline = self.training_run(nih, "baseline", mode, skip_training)
        proposed = self.training_run(nih, "expert-al", mode, skip_training)

        self.step("Evaluation")
        evaluation_dir = self.evaluate(baseline, proposed, mode, out / "evaluation")

        self.step("Study")
        study = self.build_study(nih, baseline, proposed, mode)
        analysis_dir = self.dry_run(study, mode, out / "analysis")

        base_url = f"http://{host}:{port}"

        def report():
            self.print_links(study, base_url, username, password, started)
            self.print_results(evaluation_dir, analysis_dir, baseline, proposed)

        if no_serve:
            report()
        else:
            self.serve(host, port, ready=report)

    def print_links(self, study, base_url, username, password, started):
        invite = self.invite_link(study, base_url)
        minutes = (time.monotonic() - started) / 60
        self.stdout.write(self.style.SUCCESS(f"\nDemo ready in {minutes:.1f} min."))
        self.stdout.write(f"  Participant link:   {invite}")
        self.stdout.write(
            f"  Prolific template:  {base_url}/s/{study.slug}/"
            "?PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}"
        )
        self.stdout.write(f"  Admin:              {base_url}/admin/  user {username!r}  password {password!r}")

    def print_results(self, evaluation_dir, analysis_dir, baseline, proposed):
        self.stdout.write(f"  Evaluation table:   {evaluation_dir}")
        self.stdout.write(f"  Analysis report:    {analysis_dir / 'report.html'}")
        for run in (baseline, proposed):
            run.refresh_from_db()
            self.stdout.write(f"  {run.name}: {self.training_summary(run)}")
            evaluation = [f"{label}: {warning}" for label, warning in run.evaluation_warnings]
            for warning in [run.training_warning, *evaluation]:
                if warning:
                    self.stdout.write(self.style.WARNING(f"    {warning}"))

    # --- steps ------------------------------------------------------------------------------------------------------
    @staticmethod
    def training_summary(run):
        """The steps each training stage of a run reached, out of its plan."""
        from generator.training.budget import describe_steps, run_stages

        return "steps " + (describe_steps(run_stages(run.history.get("summary", {}))) or "not recorded")

    def step(self, title):
        self.stdout.write(self.style.MIGRATE_HEADING(f"== {title}"))

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

    def register_datasets(self, mode):
        from generator.models import Dataset
        from generator.registry import register_dataset

        wanted = [
            dict(
                name=f"nih-sample{mode.suffix}",
                kind="nih",
                root=str(NIH_SAMPLE),
                resolution=mode.resolution,
                options=NIH_SAMPLE_OPTIONS,
            ),
            dict(
                name=f"phantom{mode.suffix}",
                kind="phantom",
                root=str(settings.VAR_DIR / "data" / "phantom"),
                resolution=mode.resolution,
                options={"n": 500 if mode.quick else 4000, "seed": 0},
            ),
        ]
        registered = []
        for spec in wanted:
            dataset = Dataset.objects.filter(name=spec["name"]).first()
            if dataset is None:
                dataset = register_dataset(**spec)
            self.stdout.write(f"  {dataset.name}: {dataset.split_counts} {dataset.label_counts}")
            registered.append(dataset)
        return registered

    def training_run(self, dataset, variant, mode, skip_training):
        """The finished run of this variant, training (or resuming) it when needed."""
        from tqdm import tqdm

        from generator.models import TrainingRun
        from generator.services import runs, training
        from generator.services.requests import TrainingRequest

        name = f"demo-{variant}{mode.suffix}"
        run = TrainingRun.objects.filter(name=name).first()
        if run is not None and run.status == TrainingRun.Status.SUCCEEDED:
            self.stdout.write(f"  {name}: reusing the finished run")
            return run
        if skip_training:
            raise CommandError(f"--skip-training: the run {name!r} has not finished; run the demo without it once")
        resume = run is not None
        if run is None:
            run = runs.create_training_run(
                dataset,
                variant=variant,
                preset=mode.preset,
                seed=0,
                name=name,
                steps=mode.steps,
                budget=mode.baseline_budget if variant == "baseline" else mode.proposed_budget,
                al_rounds=3,
                al_fraction=0.1,
            )
        bars = {}

        def progress(stage, fraction, message=""):
            bar = bars.get(stage)
            if bar is None:
                for other in bars.values():
                    other.close()
                bar = bars[stage] = tqdm(total=100, desc=f"{name} {stage}", unit="%", leave=True)
            bar.n = round(100 * fraction)
            bar.set_postfix_str(str(message)[:60], refresh=True)

        try:
            run = training.run_training(TrainingRequest(run=run.name, resume=resume), progress=progress)
        finally:
            for bar in bars.values():
                bar.close()
        if run.status != TrainingRun.Status.SUCCEEDED:
            raise CommandError(f"training run {name!r} failed: {run.error}")
        return run

    def evaluate(self, baseline, proposed, mode, folder):
        from generator.services import evaluation, reports
        from generator.services.requests import EvaluationRequest

        table = folder / "comparison.md"
        if table.exists():
            self.stdout.write(f"  reusing {folder}")
            return folder
        from tqdm import tqdm

        for run in (baseline, proposed):
            checkpoint = "all" if run.variant == "expert-al" else None
            with tqdm(total=100, desc=f"evaluate {run.name}", unit="%") as bar:

                def progress(fraction, message, bar=bar):
                    bar.n = round(100 * fraction)
                    bar.set_postfix_str(str(message)[:60], refresh=True)

                request = EvaluationRequest(
                    runs=[run.name],
                    checkpoint=checkpoint,
                    n=mode.eval_images,
                    seed=0,
                    figures_dir=str(folder / "figures" / run.name),
                    n_boot=200,
                    expert_steps=mode.eval_expert_steps,
                    predictor_epochs=mode.eval_predictor_epochs,
                )
                evaluation.evaluate(request, progress=progress)
            run.refresh_from_db()
        reports.compare_runs([baseline, proposed], folder)
        self.stdout.write(table.read_text())
        return folder

    def build_study(self, dataset, baseline, proposed, mode):
        """12 Block-1 patients (real + both models' counterfactuals of one condition) and 12 diseased Block-2 cases
        (real + each model's "if healthy" counterfactual), from held-out real images of the NIH sample."""
        from studyplatform import default_texts, services
        from studyplatform.models import Study
        from studyplatform.requests import StimulusRequest
        from studyplatform.stimuli import generate_stimuli

        study = Study.objects.filter(slug=mode.study_slug).first()
        if study is not None and study.status == Study.Status.OPEN:
            self.stdout.write(f"  reusing the open study {study.slug!r}")
            return study
        if study is not None:
            study.delete()
        block1, block2 = choose_cases(dataset, mode.resolution)
        with transaction.atomic():
            study = services.save_study(
                Study(
                    title=f"Counterfactual chest X-ray reader study (demo{', quick' if mode.quick else ''})",
                    slug=mode.study_slug,
                    consent_text=default_texts.CONSENT,
                    instructions_block1=default_texts.INSTRUCTIONS_BLOCK1,
                    instructions_block2=default_texts.INSTRUCTIONS_BLOCK2,
                    debrief_text=default_texts.DEBRIEF,
                    working_size=mode.resolution,
                    completion_code="DEMO" + secrets.token_hex(3).upper(),
                )
            )
            for index, (source_id, condition, image) in enumerate(block1):
                # Each patient's synthetic images show a condition other than the patient's own, in rotation.
                target = CONDITIONS[(CONDITIONS.index(condition) + 1 + index % 2) % 3]
                services.add_case(
                    study,
                    label=f"P{index + 1:02d}",
                    block=1,
                    true_condition=condition,
                    cf_condition=target,
                    real_image=image,
                    real_image_name=source_id,
                    source_id=source_id,
                )
            for index, (source_id, condition, image) in enumerate(block2):
                services.add_case(
                    study,
                    label=f"C{index + 1:02d}",
                    block=2,
                    true_condition=condition,
                    real_image=image,
                    real_image_name=source_id,
                    source_id=source_id,
                )
        from tqdm import tqdm

        with tqdm(total=100, desc="counterfactual stimuli", unit="%") as bar:

            def progress(fraction, message, bar=bar):
                bar.n = round(100 * fraction)
                bar.set_postfix_str(str(message)[:60], refresh=True)

            generate_stimuli(
                StimulusRequest(study_id=study.pk, baseline_run=baseline.name, proposed_run=proposed.name, seed=0),
                progress=progress,
            )
        study = services.open_study(study)
        self.stdout.write(f"  study {study.slug!r} opened: {len(block1)} Block-1 patients, {len(block2)} Block-2 cases")
        return study

    def dry_run(self, study, mode, folder):
        from studyplatform.models import Participant

        # Only the simulated readers count and are analysed: sessions taken in the browser are real participants,
        # which the analysis keeps apart (`run_analysis demo` analyses them), and the report says "simulated data".
        done = Participant.objects.filter(study=study, simulated=True, status=Participant.Status.COMPLETED).count()
        if done < mode.participants:
            call_command("simulate_participants", study.slug, n=mode.participants - done, seed=done)
        call_command("run_analysis", study.slug, out=str(folder), readers="simulated")
        return folder

    def invite_link(self, study, base_url):
        from studyplatform import services

        (invite,) = services.create_invites(study, 1, note="demo link")
        return f"{base_url}/s/{study.slug}/invite/{invite.token}/"

    def prepared_study(self, mode):
        from studyplatform.models import Study

        study = Study.objects.filter(slug=mode.study_slug, status=Study.Status.OPEN).first()
        if study is None:
            again = "make demo-quick" if mode.quick else "make demo"
            raise CommandError(f"--serve-only: there is no open study {mode.study_slug!r}; run `{again}` once first")
        self.stdout.write(f"  serving the prepared study {study.slug!r}")
        return study

    def serve(self, host, port, ready):
        """Run the web server and one worker; call `ready` once the site answers; stop both on Ctrl-C, SIGTERM or
        SIGHUP. A child that fails to start or stops on its own stops the demo with an error."""
        children = []
        # A signal the demo was started to ignore (nohup, a background job) stays ignored.
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
        for sig in previous:
            signal.signal(sig, _stop_requested)
        interrupt = signal.getsignal(signal.SIGINT)
        try:
            self.stdout.write(f"Starting the web server on {host}:{port} and a background worker ...")
            web = [sys.executable, "manage.py", "runserver", "--noreload", f"{host}:{port}"]
            worker = [sys.executable, "-m", "celery", "-A", "studyplatform", "worker", "--concurrency=1", "-l", "INFO"]
            children.append(("web server", _start(web)))
            children.append(("worker", _start(worker)))
            wait_until_listening(host, port, children)
            ready()
            self.stdout.write(f"Serving on http://{host}:{port}/ with a background worker. Ctrl-C stops both.")
            while True:
                check_running(children)
                time.sleep(0.5)
        except (KeyboardInterrupt, StopRequested):
            self.stdout.write("Stopping the web server and the worker ...")
        finally:
            # A second signal must not cut the clean-up short and leave a child holding the port.
            for sig in (signal.SIGINT, *STOP_SIGNALS):
                signal.signal(sig, signal.SIG_IGN)
            try:
                stop_children(children)
            finally:
                signal.signal(signal.SIGINT, interrupt)
                for sig, handler in previous.items():
                    signal.signal(sig, handler)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class StopRequested(Exception):
    """SIGTERM or SIGHUP reached the demo: stop serving as on Ctrl-C."""


def _stop_requested(signum, frame):
    raise StopRequested(signal.Signals(signum).name)


def _start(command):
    """Start a child that leads its own process group, so that stopping it also reaches its own children (Celery's
    pool), and that gets SIGTERM should the demo die without stopping it (`studyplatform.childguard`)."""
    guarded = [sys.executable, "-m", "studyplatform.childguard", str(os.getpid()), *command]
    return subprocess.Popen(guarded, start_new_session=True)


def ensure_port_free(host, port):
    """Refuse at once when something already listens on host:port (binding as the web server will)."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise CommandError(
            f"cannot serve on {host}:{port}: {exc.strerror or exc}. Another process (an earlier demo?) uses the "
            f"port: stop it, or choose another port with PORT=8001 make demo (manage.py demo --port 8001)."
        ) from exc


def check_running(children):
    for name, child in children:
        code = child.poll()
        if code is not None:
            raise CommandError(f"the {name} stopped with exit status {code}; the demo stops too (see its output above)")


def wait_until_listening(host, port, children, timeout=600):
    """Block until the web server accepts connections, failing when a child exits first."""
    address = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    deadline = time.monotonic() + timeout
    while True:
        check_running(children)
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise CommandError(f"the web server did not answer on {host}:{port} within {timeout} s") from None
            time.sleep(0.2)


def stop_children(children, grace=20):
    """SIGTERM to each child's process group (the web server exits, the worker finishes its task: a warm shutdown;
    unlike SIGINT it is never inherited as ignored), then, after `grace` seconds, SIGKILL to what is left."""
    for _, child in children:
        if child.poll() is None:
            _signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for _, child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(child, signal.SIGKILL)
        child.wait()


def _signal_group(child, sig):
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def choose_cases(dataset, resolution, n_block1=12, n_block2=12):
    """Real images of the held-out test split that pass the stimulus screening (adults, frontal views, no large
    blank border), for both blocks without repeats: Block 1 balanced over the three conditions, Block 2 half
    effusion, half pneumonia as far as the split allows (effusion fills up)."""
    from generator.services.stimuli import stimulus_candidates

    candidates, screened_out = stimulus_candidates(dataset, resolution)
    pool = {condition: [] for condition in CONDITIONS}
    for source_id, condition, _ in candidates:
        pool[condition].append(source_id)
    per_condition = n_block1 // 3
    where = f"the test split of {dataset.name} ({len(screened_out)} of its images screened out)"
    for condition in CONDITIONS:
        if len(pool[condition]) < per_condition:
            raise CommandError(f"{where} has {len(pool[condition])} {condition} images; Block 1 needs {per_condition}")
    picked1 = [(source_id, condition) for condition in CONDITIONS for source_id in pool[condition][:per_condition]]
    rest = {condition: pool[condition][per_condition:] for condition in ("effusion", "pneumonia")}
    n_pneumonia = min(n_block2 - n_block2 // 2, len(rest["pneumonia"]))
    n_effusion = n_block2 - n_pneumonia
    if len(rest["effusion"]) < n_effusion:
        raise CommandError(f"{where} has too few diseased images left for {n_block2} Block-2 cases")
    picked2 = [(source_id, "effusion") for source_id in rest["effusion"][:n_effusion]]
    picked2 += [(source_id, "pneumonia") for source_id in rest["pneumonia"][:n_pneumonia]]
    images = Path(dataset.root) / "images"

    def with_image(items):
        return [(source_id, condition, (images / source_id).read_bytes()) for source_id, condition in items]

    # Interleave the conditions so the researcher's case list reads P01 healthy, P02 effusion, ...
    order = {item: (rank % per_condition, CONDITIONS.index(item[1])) for rank, item in enumerate(picked1)}
    picked1.sort(key=order.__getitem__)
    return with_image(picked1), with_image(picked2)
