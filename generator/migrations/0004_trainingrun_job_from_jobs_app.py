# TrainingRun.job now points at the Job model of the jobs app. Both models are the same table at this point (see
# jobs/migrations/0001_initial.py), so the column and its foreign key constraint stay as they are.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('generator', '0003_alter_trainingrun_variant'),
        ('jobs', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='trainingrun',
                    name='job',
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, to='jobs.job'),
                ),
            ],
            database_operations=[],
        ),
    ]
