import json

from django.contrib import admin
from django.utils.html import format_html

from generator.models import Dataset


def _pretty_json(value):
    return format_html("<pre style='margin:0'>{}</pre>", json.dumps(value, indent=2, sort_keys=True))


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    """Data sets are registered with `manage.py import_dataset`; the admin shows what they contain."""

    list_display = ("name", "kind", "resolution", "images", "labels", "created_at")
    list_filter = ("kind", "resolution")
    search_fields = ("name", "root")
    fields = (
        "name",
        "kind",
        "root",
        "resolution",
        "created_at",
        "options_view",
        "split_counts_view",
        "label_counts_view",
        "parent_stats_view",
        "graph_view",
    )
    readonly_fields = fields

    @admin.display(description="images")
    def images(self, dataset):
        return sum(dataset.split_counts.values())

    @admin.display(description="healthy / effusion / pneumonia")
    def labels(self, dataset):
        total = dataset.label_counts.get("total", {})
        return " / ".join(str(total.get(label, 0)) for label in ("healthy", "effusion", "pneumonia"))

    @admin.display(description="options")
    def options_view(self, dataset):
        return _pretty_json(dataset.options)

    @admin.display(description="split counts")
    def split_counts_view(self, dataset):
        return _pretty_json(dataset.split_counts)

    @admin.display(description="label counts")
    def label_counts_view(self, dataset):
        return _pretty_json(dataset.label_counts)

    @admin.display(description="parent statistics")
    def parent_stats_view(self, dataset):
        return _pretty_json(dataset.parent_stats)

    @admin.display(description="causal graph")
    def graph_view(self, dataset):
        return _pretty_json(dataset.graph)

    def has_add_permission(self, request):
        return False


# Training runs have their own module (list, detail, start form); importing it registers them.
from generator import admin_runs  # noqa: E402,F401
