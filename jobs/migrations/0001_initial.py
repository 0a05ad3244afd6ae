# The Job model moves here from the study app, rows and all. This migration only takes the model over in Django's
# state: the table the study app created stays where it is until 0002 renames it, once the study app has let go of
# the model and the generator's TrainingRun points here.

import uuid

from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('studyplatform', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='Job',
                    fields=[
                        ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ('kind', models.CharField(db_index=True, max_length=64)),
                        ('status', models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('failed', 'Failed'), ('cancelled', 'Cancelled')], db_index=True, default='queued', max_length=16)),
                        ('progress', models.FloatField(default=0.0, help_text='0-100')),
                        ('message', models.CharField(blank=True, max_length=500)),
                        ('log_tail', models.TextField(blank=True)),
                        ('params', models.JSONField(blank=True, default=dict)),
                        ('result', models.JSONField(blank=True, null=True)),
                        ('error', models.TextField(blank=True)),
                        ('cancel_requested', models.BooleanField(default=False)),
                        ('celery_task_id', models.CharField(blank=True, max_length=255)),
                        ('worker', models.CharField(blank=True, help_text='host:pid of the process running the job', max_length=255)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('started_at', models.DateTimeField(blank=True, null=True)),
                        ('finished_at', models.DateTimeField(blank=True, null=True)),
                        ('heartbeat_at', models.DateTimeField(blank=True, null=True)),
                    ],
                    options={
                        'ordering': ['-created_at'],
                        'db_table': 'studyplatform_job',
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
