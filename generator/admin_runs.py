"""Admin of training runs: their state at a glance, readable metrics and history, and a form that starts a run."""

import json

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from generator.models import Dataset, TrainingRun
from generator.services import reports, runs
from generator.services.requests import TrainingRequest
from generator.training.presets import PRESETS


class StartRunForm(forms.Form):
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.all())
    variant = forms.ChoiceField(choices=TrainingRun.Variant.choices, initial=TrainingRun.Variant.BASELINE)
    preset = forms.ChoiceField(choices=[(name, name) for name in PRESETS], initial="cpu-64")
    seed = forms.IntegerField(initial=0)
    name = forms.SlugField(required=False, max_length=100, help_text="leave empty for an automatic name")
    steps = forms.CharField(
        required=False, help_text="N for every stage, or stage=N,... (empty: the preset's defaults)"
    )
    budget = forms.FloatField(required=False, min_value=1, help_text="wall-clock seconds for all stages")
    al_rounds = forms.IntegerField(initial=3, min_value=0, help_text="active-learning rounds (expert-al only)")
    al_fraction = forms.FloatField(initial=0.1, min_value=0, max_value=1, help_text="share added per round")

    def clean_steps(self):
        try:
            return runs.parse_steps(self.cleaned_data["steps"])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from exc


def pretty_json(value):
    return format_html("<pre style='white-space:pre-wrap;margin:0'>{}</pre>", json.dumps(value, indent=2))


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "status",
        "stage",
        "training",
        "variant",
        "preset",
        "dataset",
        "seed",
        "job_link",
        "updated_at",
    )
    list_filter = ("status", "variant", "preset", "dataset")
    search_fields = ("name", "code_version")
    readonly_fields = (
        "name",
        "dataset",
        "variant",
        "preset",
        "seed",
        "code_version",
        "status",
        "stage",
        "job_link",
        "error",
        "training",
        "metrics_table",
        "checkpoint_list",
        "history_summary",
        "config_json",
        "metrics_json",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("name", "dataset", "variant", "preset", "seed", "code_version")}),
        ("State", {"fields": ("status", "stage", "training", "job_link", "error", "created_at", "updated_at")}),
        ("Results", {"fields": ("metrics_table", "checkpoint_list", "history_summary")}),
        ("Raw", {"classes": ("collapse",), "fields": ("config_json", "metrics_json")}),
    )
    actions = ["resume_runs"]

    def get_urls(self):
        start = self.admin_site.admin_view(self.start_run_view)
        return [path("start/", start, name="generator_trainingrun_start"), *super().get_urls()]

    def add_view(self, request, form_url="", extra_context=None):
        """Adding a run means starting one: the start form replaces the generic add form."""
        return HttpResponseRedirect(reverse("admin:generator_trainingrun_start") + _query(request))

    def has_change_permission(self, request, obj=None):
        return False

    def start_run_view(self, request):
        if not self.has_add_permission(request):
            return HttpResponseRedirect(reverse("admin:index"))
        initial = {"dataset": request.GET.get("dataset")} if request.GET.get("dataset") else {}
        form = StartRunForm(request.POST or None, initial=initial)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                run = runs.create_training_run(
                    data["dataset"],
                    data["variant"],
                    data["preset"],
                    seed=data["seed"],
                    name=data["name"] or None,
                    steps=data["steps"],
                    budget=data["budget"],
                    al_rounds=data["al_rounds"],
                    al_fraction=data["al_fraction"],
                )
            except ValueError as exc:
                form.add_error(None, str(exc))
            else:
                job = runs.start_training_job(TrainingRequest(run=run.name))
                self.message_user(request, f"Run {run.name} queued as job {job.pk}.", messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:generator_trainingrun_change", args=[run.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Start a training run",
            "form": form,
        }
        return render(request, "admin/generator/trainingrun/start_run.html", context)

    @admin.action(description="Resume selected runs in the background")
    def resume_runs(self, request, queryset):
        for run in queryset:
            try:
                job = runs.start_training_job(TrainingRequest(run=run.name, resume=True))
            except ValueError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(request, f"Run {run.name} queued as job {job.pk}.", messages.SUCCESS)

    @admin.display(description="job")
    def job_link(self, run):
        if run.job_id is None:
            return "-"
        url = reverse("admin:jobs_job_change", args=[run.job_id])
        return format_html('<a href="{}">{} ({:.0f}%)</a>', url, run.job.status, run.job.progress)

    @admin.display(description="training")
    def training(self, run):
        """Steps reached per stage, and in plain words when a budget left the run under-trained."""
        if run.under_trained:
            return format_html('<strong style="color:#ba2121">{}</strong>', run.training_warning)
        if run.status == TrainingRun.Status.SUCCEEDED:
            return "complete"
        return "-"

    @admin.display(description="metrics")
    def metrics_table(self, run):
        """One column per evaluated checkpoint and one row per metric: a run has a few checkpoints but many
        metrics, so the table fits the page (and scrolls inside its field if a run has very many checkpoints)."""
        rows = reports.metrics_rows(run)
        if not rows:
            return "not evaluated yet (manage.py evaluate_generator)"
        notes = format_html_join("", '<p style="color:#ba2121"><strong>{}: {}</strong></p>', run.evaluation_warnings)
        first, *metrics = list(rows[0])
        header = format_html_join("", "<th>{}</th>", ((name,) for name in [first, *(row[first] for row in rows)]))
        body = format_html_join(
            "",
            "<tr><th>{}</th>{}</tr>",
            ((metric, format_html_join("", "<td>{}</td>", ((row[metric],) for row in rows))) for metric in metrics),
        )
        return format_html(
            '{}<div class="wide-table"><table><thead><tr>{}</tr></thead><tbody>{}</tbody></table></div>',
            notes,
            header,
            body,
        )

    @admin.display(description="checkpoints")
    def checkpoint_list(self, run):
        if not run.checkpoints:
            return "none"
        return format_html_join("", "<div><b>{}</b>: <code>{}</code></div>", sorted(run.checkpoints.items()))

    @admin.display(description="loss history (last logged values)")
    def history_summary(self, run):
        rows = []
        for stage, points in run.history.items():
            if isinstance(points, list) and points:
                last = points[-1]
                values = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if isinstance(v, float))
                rows.append((stage, len(points), last.get("step", ""), values))
        if not rows:
            return "-"
        return format_html_join("", "<div><b>{}</b> ({} points, step {}): {}</div>", rows)

    @admin.display(description="configuration")
    def config_json(self, run):
        return pretty_json(run.config)

    @admin.display(description="all metrics")
    def metrics_json(self, run):
        return pretty_json(run.metrics)


def _query(request):
    return f"?{request.GET.urlencode()}" if request.GET else ""
