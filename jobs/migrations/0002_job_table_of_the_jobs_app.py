# The table moved from the study app gets the jobs app's own name, and the content type follows it, so that the
# permissions granted on jobs and the admin history of jobs stay with them. Renaming keeps the rows, and the
# databases carry the foreign key of generator_trainingrun along. This runs after the study app has let go of the
# model, and with it after every migration that created a foreign key to the old table.

from django.db import migrations


def relabel_content_type(from_app, to_app):
    def relabel(apps, schema_editor):
        content_types = apps.get_model('contenttypes', 'ContentType').objects.using(schema_editor.connection.alias)
        # A migrate that stopped half-way may have created the new content type already: then the old one, and
        # what points at it, is left for remove_stale_contenttypes rather than merged.
        if not content_types.filter(app_label=to_app, model='job').exists():
            content_types.filter(app_label=from_app, model='job').update(app_label=to_app)

    return relabel


class Migration(migrations.Migration):

    dependencies = [
        ('contenttypes', '0002_remove_content_type_name'),
        ('jobs', '0001_initial'),
        ('studyplatform', '0007_job_moved_to_jobs_app'),
    ]

    operations = [
        migrations.AlterModelTable(name='job', table=None),
        migrations.RunPython(
            relabel_content_type('studyplatform', 'jobs'), relabel_content_type('jobs', 'studyplatform')
        ),
    ]
