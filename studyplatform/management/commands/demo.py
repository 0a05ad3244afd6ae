"""`manage.py demo`: the main job on the embedded data, end to end, then the site and a worker.

1. migrate and make an admin account (random password, printed);
2. register the bundled real NIH sample and a phantom data set;
3. train the baseline and the proposed (expert + active learning) generators on the real sample within a budget;
4. evaluate both and write the Table-1-style comparison and figures under var/demo/evaluation;
5. build a study of 12 Block-1 patients and 12 Block-2 cases from real images and both models' counterfactuals,
   open it, run simulated participants through the participant API and analyse their answers;
6. serve the study with a background worker and print the links.

Every step reuses what a previous run finished, so a second `make demo` starts serving within seconds.
"""

import os
import secrets
import signal
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
CONDITIONS = ("healthy", "effusion", "pneumonia")


class Mode:
    """What differs between the full demo and the quick chain (tiny model, used as the CI smoke test)."""

    def __init__(self, quick, budget):
        self.quick = quick
        self.preset = "test-32" if quick else "cpu-64"
        self.resolution = 32 if quick else 64
        self.budget = budget
        # Shares of the total budget: the proposed model also trains its expert and fine-tunes per AL round.
        self.baseline_budget = 0.25 * budget
        self.proposed_budget = 0.30 * budget
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
            "--budget",
            type=float,
            default=float(os.environ.get("DEMO_BUDGET", 1200)),
            help="seconds of training for both models together (env DEMO_BUDGET; default 1200)",
        )
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))

    def handle(self, *args, quick=False, skip_training=False, no_serve=False, budget=1200, host=None, port=None, **o):
        started = time.monotonic()
        mode = Mode(quick or os.environ.get("DEMO") == "quick", budget)
        out = DEMO_DIR / ("quick" if mode.quick else "full")
        out.mkdir(parents=True, exist_ok=True)
        self.step("Database and admin account")
        call_command("migrate", interactive=False, verbosity=0)
        username, password = self.ensure_admin()

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
        invite = self.invite_link(study, base_url)
        minutes = (time.monotonic() - started) / 60
        self.stdout.write(self.style.SUCCESS(f"\nDemo ready in {minutes:.1f} min."))
        self.stdout.write(f"  Participant link:   {invite}")
        self.stdout.write(
            f"  Prolific template:  {base_url}/s/{study.slug}/"
            "?PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}"
        )
        self.stdout.write(f"  Admin:              {base_url}/admin/  user {username!r}  password {password!r}")
        self.stdout.write(f"  Evaluation table:   {evaluation_dir}")
        self.stdout.write(f"  Analysis report:    {analysis_dir / 'report.html'}")
        for run in (baseline, proposed):
            run.refresh_from_db()
            self.stdout.write(f"  {run.name}: {self.training_summary(run)}")
            evaluation = [f"{label}: {warning}" for label, warning in run.evaluation_warnings]
            for warning in [run.training_warning, *evaluation]:
                if warning:
                    self.stdout.write(self.style.WARNING(f"    {warning}"))
        if not no_serve:
            self.serve(host, port)

    # --- steps ------------------------------------------------------------------------------------------------------
    @staticmethod
    def training_summary(run):
        """The steps each training stage of a run reached, out of its plan."""
        from generator.training.budget import describe_steps

        stages = run.history.get("summary", {}).get("stages", {})
        return "steps " + (describe_steps(stages) or "not recorded")

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
                options={"views": ["PA", "AP"], "seed": 0},
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

        from generator import services
        from generator.models import TrainingRun

        name = f"demo-{variant}{mode.suffix}"
        run = TrainingRun.objects.filter(name=name).first()
        if run is not None and run.status == TrainingRun.Status.SUCCEEDED:
            self.stdout.write(f"  {name}: reusing the finished run")
            return run
        if skip_training:
            raise CommandError(f"--skip-training: the run {name!r} has not finished; run the demo without it once")
        resume = run is not None
        if run is None:
            run = services.create_training_run(
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
            run = services.run_training(run, progress=progress, resume=resume)
        finally:
            for bar in bars.values():
                bar.close()
        if run.status != TrainingRun.Status.SUCCEEDED:
            raise CommandError(f"training run {name!r} failed: {run.error}")
        return run

    def evaluate(self, baseline, proposed, mode, folder):
        from generator import services

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

                services.evaluate_run(
                    run,
                    checkpoint,
                    n=mode.eval_images,
                    seed=0,
                    figures_dir=folder / "figures" / run.name,
                    n_boot=200,
                    expert_steps=mode.eval_expert_steps,
                    predictor_epochs=mode.eval_predictor_epochs,
                    progress=progress,
                )
            run.refresh_from_db()
        services.compare_runs([baseline, proposed], folder)
        self.stdout.write(table.read_text())
        return folder

    def build_study(self, dataset, baseline, proposed, mode):
        """12 Block-1 patients (real + both models' counterfactuals of one condition) and 12 diseased Block-2 cases
        (real + each model's "if healthy" counterfactual), from held-out real images of the NIH sample."""
        from generator import services as generator_services
        from studyplatform import default_texts, services
        from studyplatform.models import Study

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
        generator_services.generate_stimuli(study, baseline, proposed, seed=0)
        study = services.open_study(study)
        self.stdout.write(f"  study {study.slug!r} opened: {len(block1)} Block-1 patients, {len(block2)} Block-2 cases")
        return study

    def dry_run(self, study, mode, folder):
        from studyplatform.models import Participant

        done = Participant.objects.filter(study=study, status=Participant.Status.COMPLETED).count()
        if done < mode.participants:
            call_command("simulate_participants", study.slug, n=mode.participants - done, seed=done)
        call_command("run_analysis", study.slug, out=str(folder))
        return folder

    def invite_link(self, study, base_url):
        from studyplatform import services

        (invite,) = services.create_invites(study, 1, note="demo link")
        return f"{base_url}/s/{study.slug}/invite/{invite.token}/"

    def serve(self, host, port):
        """Run the web server and one worker until Ctrl-C, then stop both."""
        children = [
            subprocess.Popen([sys.executable, "manage.py", "runserver", "--noreload", f"{host}:{port}"]),
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "studyplatform", "worker", "--concurrency=1", "--loglevel=INFO"]
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


def choose_cases(dataset, resolution, n_block1=12, n_block2=12):
    """Held-out real images (test, then validation, then training split) for both blocks, without repeats:
    Block 1 balanced over the three conditions, Block 2 half effusion, half pneumonia."""
    from generator.services import load_run_splits

    splits = load_run_splits(dataset, resolution)
    pool = {condition: [] for condition in CONDITIONS}
    for split in ("test", "valid", "train"):
        data = splits[split]
        for index, source_id in enumerate(data.ids):
            pool[CONDITIONS[int(data.pa["disease"][index])]].append(source_id)
    wanted_block1 = {condition: n_block1 // 3 for condition in CONDITIONS}
    wanted_block2 = {"effusion": n_block2 // 2, "pneumonia": n_block2 - n_block2 // 2}
    picked1, picked2 = [], []
    for condition in CONDITIONS:
        needed = wanted_block1[condition] + wanted_block2.get(condition, 0)
        if len(pool[condition]) < needed:
            raise CommandError(f"the data set has {len(pool[condition])} {condition} images; the study needs {needed}")
        ids = pool[condition][:needed]
        picked1 += [(source_id, condition) for source_id in ids[: wanted_block1[condition]]]
        picked2 += [(source_id, condition) for source_id in ids[wanted_block1[condition] :]]
    images = Path(dataset.root) / "images"

    def with_image(items):
        return [(source_id, condition, (images / source_id).read_bytes()) for source_id, condition in items]

    # Interleave the conditions so the researcher's case list reads P01 healthy, P02 effusion, ...
    per_condition = n_block1 // 3
    order = {item: (rank % per_condition, CONDITIONS.index(item[1])) for rank, item in enumerate(picked1)}
    picked1.sort(key=order.__getitem__)
    return with_image(picked1), with_image(picked2)
