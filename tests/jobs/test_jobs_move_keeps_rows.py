"""Moving the Job model from the study app to the jobs app keeps a database's jobs, the training runs that point at
them, and the permissions granted on jobs."""

import uuid

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

# The state before the move: Job belonged to the study app and the jobs app did not exist.
BEFORE_THE_MOVE = [
    ("studyplatform", "0006_alter_study_slug"),
    ("generator", "0003_alter_trainingrun_variant"),
    ("jobs", None),
]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    # The models as the applied migrations left them, in every app.
    loader = MigrationExecutor(connection).loader
    return loader.project_state(list(loader.applied_migrations)).apps


@pytest.fixture
def every_migration_again():
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    yield latest
    # Later tests expect the schema of the code.
    migrate(latest)


def test_migrating_past_the_move_keeps_jobs_runs_and_permissions(every_migration_again):
    old = migrate(BEFORE_THE_MOVE)
    ContentType = old.get_model("contenttypes", "ContentType")
    job_type, _ = ContentType.objects.get_or_create(app_label="studyplatform", model="job")
    change_job, _ = old.get_model("auth", "Permission").objects.get_or_create(
        content_type=job_type, codename="change_job", defaults={"name": "Can change job"}
    )
    researchers = old.get_model("auth", "Group").objects.create(name="researchers")
    researchers.permissions.add(change_job)
    job = old.get_model("studyplatform", "Job").objects.create(
        kind="train_generator", status="running", progress=42.0, params={"run_id": "r"}
    )
    dataset = old.get_model("generator", "Dataset").objects.create(name="d", kind="phantom", root="/tmp")
    run = old.get_model("generator", "TrainingRun").objects.create(name="run", dataset=dataset, job=job)

    new = migrate(every_migration_again)

    moved = new.get_model("jobs", "Job").objects.get(pk=job.pk)
    assert (moved.kind, moved.status, moved.progress, moved.params) == (
        "train_generator",
        "running",
        42.0,
        {"run_id": "r"},
    )
    assert new.get_model("generator", "TrainingRun").objects.get(pk=run.pk).job == moved
    assert new.get_model("generator", "TrainingRun")._meta.get_field("job").related_model._meta.db_table == "jobs_job"
    granted = new.get_model("auth", "Group").objects.get(name="researchers").permissions.get()
    assert (granted.content_type.app_label, granted.codename) == ("jobs", "change_job")
    # The foreign key still holds, now against the renamed table.
    with pytest.raises(IntegrityError), transaction.atomic():
        new.get_model("generator", "TrainingRun").objects.filter(pk=run.pk).update(job_id=uuid.uuid4())
