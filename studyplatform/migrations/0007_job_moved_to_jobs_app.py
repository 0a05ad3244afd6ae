# The Job model now belongs to the jobs app (jobs/migrations/0001_initial.py took it over with its table). The study
# app forgets it once nothing else points at it; the table and its rows are kept.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('studyplatform', '0006_alter_study_slug'),
        ('generator', '0004_trainingrun_job_from_jobs_app'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name='Job'),
            ],
            database_operations=[],
        ),
    ]
