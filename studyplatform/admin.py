from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from jobs import runner
from jobs.models import Job
from studyplatform import export, services
from studyplatform.forms import CaseForm, CaseInlineForm, GenerateStimuliForm, InviteForm, StudyForm
from studyplatform.models import AuditLog, Case, Invite, Participant, Response, Stimulus, Study
from studyplatform.requests import StimulusRequest

# --- reader studies ------------------------------------------------------------------------------------------------


def copyable(value):
    return format_html(
        '<input type="text" readonly value="{}" size="60" onclick="this.select()" aria-label="link to copy">', value
    )


def thumbnail(stimulus, size=72):
    if stimulus is None:
        return "-"
    return format_html(
        '<img src="/i/{}" width="{}" height="{}" alt="" style="background:#000" title="{}">',
        stimulus.token,
        size,
        size,
        f"{stimulus.source}: {stimulus.condition}",
    )


def _has_perms(request, *codenames):
    return request.user.has_perms([f"studyplatform.{codename}" for codename in codenames])


class ExportPermission:
    """Exports hold participants and their answers: they need the view permissions of both (as the staff API)."""

    def has_export_permission(self, request):
        return _has_perms(request, "view_study", "view_participant", "view_response")


def _one_study(modeladmin, request, queryset):
    studies = {obj if isinstance(obj, Study) else obj.study for obj in queryset}
    if len(studies) != 1:
        modeladmin.message_user(request, "Select items of exactly one study.", messages.ERROR)
        return None
    return studies.pop()


def _csv_download(study, table, raw_ids=False):
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{study.slug}-{table}.csv"'
    writer = export.write_answers_csv if table == "answers" else export.write_participants_csv
    writer(study, response, raw_ids=raw_ids)
    return response


class CaseInline(admin.TabularInline):
    model = Case
    extra = 0
    fields = ("label", "block", "true_condition", "cf_condition", "images")
    readonly_fields = fields
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="real / baseline / proposed")
    def images(self, case):
        by_source = {s.source: s for s in case.stimuli.all()}
        return format_html_join(" ", "{}", ((thumbnail(by_source.get(s)),) for s in ("real", "baseline", "proposed")))


class NewCaseInline(admin.TabularInline):
    """Adds cases (with their real image) from the study page while the study is a draft; the cases it has are
    listed above it and edited on their own page."""

    model = Case
    form = CaseInlineForm
    extra = 1
    fields = ("label", "block", "source_id", "true_condition", "cf_condition", "real_image")
    verbose_name = "new case"
    verbose_name_plural = "add cases"

    def get_queryset(self, request):
        return super().get_queryset(request).none()

    # Offered only while the study is a draft (or being added); an open study's page has no such rows at all.
    def has_add_permission(self, request, obj=None):
        return _draft(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return _draft(obj) and super().has_change_permission(request, obj)

    def has_view_permission(self, request, obj=None):
        return _draft(obj) and super().has_view_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False


def _draft(study):
    return study is None or study.status == Study.Status.DRAFT


def stimulus_jobs(study, limit=3):
    """The latest stimulus-generation jobs of a study."""
    return Job.objects.filter(kind="generate_stimuli", params__study_id=study.pk).order_by("-created_at")[:limit]


BLOCK1_DESIGN_HELP = (
    "Paired (the paper's design): each participant sees every patient three times, as the real radiograph and as "
    "the baseline and the proposed counterfactual, so sources are compared on the same patient by the same reader. "
    "But when a patient's counterfactuals show another condition than the real image, the image that differs from "
    "the other two is the real one: it can be found by elimination. "
    "Counterbalanced: each participant sees every patient once, as real, baseline or proposed by a Latin square "
    "over participants (over every three participants each patient is shown once as each). Nothing can be found by "
    "elimination, but two sources of one patient are always seen by different participants, so they are compared "
    "between participants (the analysis uses mixed models with participant and patient effects) and each "
    "participant answers a third as many Block-1 images. It needs a multiple of 3 patients whose real images show "
    "the conditions in the same proportions as their counterfactuals; recruit participants in multiples of 3. "
    "The design cannot change once the study has opened."
)


@admin.register(Study)
class StudyAdmin(ExportPermission, admin.ModelAdmin):
    form = StudyForm
    list_display = ("title", "slug", "status", "counts", "sessions_refused", "opened_at")
    list_filter = ("status",)
    search_fields = ("title", "slug")
    prepopulated_fields = {"slug": ("title",)}
    readonly_fields = (
        "status",
        "opened_at",
        "closed_at",
        "prolific_link",
        "readiness",
        "counts",
        "sessions_refused",
        "stimulus_build",
    )
    inlines = [CaseInline, NewCaseInline]
    actions = [
        "open_studies",
        "close_studies",
        "export_answers",
        "export_participants",
        "create_invites",
        "generate_stimuli",
    ]
    fieldsets = (
        (None, {"fields": ("title", "slug", "status", "readiness", "counts", "sessions_refused", "prolific_link")}),
        ("Texts", {"fields": ("consent_text", "instructions_block1", "instructions_block2", "debrief_text")}),
        (
            "Questions",
            {
                "fields": (
                    "diagnosis_labels",
                    "reasons",
                    ("realness_min", "realness_max"),
                    ("confidence_min", "confidence_max"),
                    "attention_checks",
                )
            },
        ),
        ("Block-1 design", {"fields": ("block1_design",), "description": BLOCK1_DESIGN_HELP}),
        (
            "Stimulus set",
            {"fields": ("block1_patients", "block2_cases", "working_size", "display_size", "stimulus_build")},
        ),
        (
            "Prolific and timing",
            {
                "fields": (
                    "prolific_study_id",
                    "completion_code",
                    "completion_url",
                    "time_limit_minutes",
                    "opened_at",
                    "closed_at",
                )
            },
        ),
    )

    @admin.display(description="participants")
    def counts(self, study):
        counts = services.participant_counts(study)
        shown = [f"{counts['total']} total"] + [
            f"{counts[status]} {label}" for status, label in Participant.Status.choices if counts[status]
        ]
        return ", ".join(shown)

    @admin.display(description="Prolific study URL")
    def prolific_link(self, study):
        if not study.slug:
            return "shown here once the study is saved with its slug"
        return copyable(
            f"{settings.SITE_URL}/s/{study.slug}/?PROLIFIC_PID={{{{%PROLIFIC_PID%}}}}"
            "&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}"
        )

    @admin.display(description="counterfactual generation")
    def stimulus_build(self, study):
        """The progress of the study's stimulus-generation jobs, where the researcher waits for them."""
        found = list(stimulus_jobs(study)) if study.pk is not None else []
        if not found:
            return "none yet (action: Generate counterfactual stimuli from training runs)"
        rows = (
            (
                reverse("admin:jobs_job_change", args=[job.pk]),
                job.created_at.strftime("%Y-%m-%d %H:%M"),
                job.status,
                round(job.progress),
                round(job.progress),
                job.error.splitlines()[-1] if job.error else job.message,
            )
            for job in found
        )
        running = any(not job.is_finished for job in found)
        hint = format_html("<div>{}</div>", "Reload the page to follow the progress.") if running else ""
        rows_html = format_html_join(
            "",
            '<div><a href="{}">{}</a> {} <progress max="100" value="{}" style="width:8em"></progress> {}% {}</div>',
            rows,
        )
        return format_html("{}{}", rows_html, hint)

    @admin.display(description="ready to open?")
    def readiness(self, study):
        if study.pk is None:
            return "-"
        problems = services.study_problems(study)
        if not problems:
            return "yes"
        return format_html("<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((p,) for p in problems)))

    def has_invite_permission(self, request):
        return _has_perms(request, "add_invite")

    def has_generate_permission(self, request):
        return _has_perms(request, "change_study", "add_stimulus")

    def get_readonly_fields(self, request, obj=None):
        """Once the study has opened, what shapes a session or an answer's meaning is shown read-only; texts stay
        editable (each change is kept in the audit log)."""
        if obj is not None and obj.status != Study.Status.DRAFT:
            return [*self.readonly_fields, *services.FROZEN_WHEN_OPEN]
        return self.readonly_fields

    def get_prepopulated_fields(self, request, obj=None):
        return {} if obj is not None and obj.status != Study.Status.DRAFT else self.prepopulated_fields

    def save_model(self, request, obj, form, change):
        services.save_study(obj, by=request.user, changed=form.changed_data)

    def save_formset(self, request, form, formset, change):
        """Cases added on the study page go through the service (image normalised, audit-logged)."""
        if formset.model is not Case:
            return super().save_formset(request, form, formset, change)
        # What the admin's change message reads from a saved formset.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        for case_form in formset.forms:
            if case_form.instance.pk is not None or not case_form.has_changed():
                continue
            data = case_form.cleaned_data
            image, name = case_form.uploads()["real"]
            case = services.add_case(
                form.instance,
                label=data["label"],
                block=data["block"],
                true_condition=data["true_condition"],
                cf_condition=data["cf_condition"],
                source_id=data["source_id"],
                real_image=image,
                real_image_name=name,
                by=request.user,
            )
            formset.new_objects.append(case)

    def delete_model(self, request, obj):
        services.audit(request.user, "study.delete", obj, None, slug=obj.slug)
        super().delete_model(request, obj)

    def _each(self, request, queryset, fn, verb):
        for study in queryset:
            try:
                fn(study, by=request.user)
            except ValidationError as exc:
                for message in exc.messages:
                    self.message_user(request, message, messages.ERROR)
            else:
                self.message_user(request, f"{study.slug}: {verb}.", messages.SUCCESS)

    @admin.action(description="Open selected studies (checks the stimulus set)", permissions=["change"])
    def open_studies(self, request, queryset):
        self._each(request, queryset, services.open_study, "open")

    @admin.action(description="Close selected studies", permissions=["change"])
    def close_studies(self, request, queryset):
        self._each(request, queryset, services.close_study, "closed")

    @admin.action(description="Export answers CSV (pseudonymised ids)", permissions=["export"])
    def export_answers(self, request, queryset):
        study = _one_study(self, request, queryset)
        return _csv_download(study, "answers") if study else None

    @admin.action(description="Export participants CSV (pseudonymised ids)", permissions=["export"])
    def export_participants(self, request, queryset):
        study = _one_study(self, request, queryset)
        return _csv_download(study, "participants") if study else None

    @admin.action(description="Create invitation links", permissions=["invite"])
    def create_invites(self, request, queryset):
        study = _one_study(self, request, queryset)
        if study is None:
            return None
        form = InviteForm(request.POST if "count" in request.POST else None)
        if form.is_valid():
            invites = services.create_invites(
                study, form.cleaned_data["count"], form.cleaned_data["note"], request.user
            )
            self.message_user(request, f"{len(invites)} invitation links created (see Invites).", messages.SUCCESS)
            return None
        return self._action_form(request, queryset, study, form, "create_invites", "Create invitation links", "Create")

    @admin.action(
        description="Generate counterfactual stimuli from training runs (background job)", permissions=["generate"]
    )
    def generate_stimuli(self, request, queryset):
        study = _one_study(self, request, queryset)
        if study is None:
            return None
        if study.status != Study.Status.DRAFT:
            self.message_user(
                request,
                f"{study.slug}: the study is {study.status}, so its stimulus set is frozen; counterfactual stimuli can "
                "only be generated for a draft study.",
                messages.ERROR,
            )
            return None
        form = GenerateStimuliForm(request.POST if "baseline_run" in request.POST else None)
        if form.is_valid():
            stimulus_request = StimulusRequest(
                study_id=study.pk,
                baseline_run=str(form.cleaned_data["baseline_run"].pk),
                proposed_run=str(form.cleaned_data["proposed_run"].pk),
                samples=form.cleaned_data["samples"],
                seed=form.cleaned_data["seed"],
                **form.stimulus_options(),
            )
            job = runner.enqueue("generate_stimuli", **stimulus_request.to_params())
            services.audit(request.user, "stimuli.generate", study, study, job=str(job.pk))
            self.message_user(
                request, f"Job {job.pk} queued; its progress shows under Counterfactual generation.", messages.SUCCESS
            )
            return HttpResponseRedirect(reverse("admin:studyplatform_study_change", args=[study.pk]))
        help_text = (
            "Every case with a data-set image id gets the counterfactual of each model under its counterfactual "
            "condition; the images replace any earlier ones of the same model. Source images must come from the "
            "held-out test split and pass the stimulus screening: an adult patient (18 or older), a frontal view "
            "(PA or AP) and no blank border over 20% of the image area (measured from the pixels). A case that "
            "fails is skipped, with its reason on the job and on the case; the options below relax the rules."
        )
        return self._action_form(
            request,
            queryset,
            study,
            form,
            "generate_stimuli",
            "Generate counterfactual stimuli",
            "Queue job",
            help_text,
        )

    def _action_form(self, request, queryset, study, form, action, title, submit, help_text=""):
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "study": study,
            "queryset": queryset,
            "title": title,
            "action": action,
            "submit": submit,
            "help": help_text,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "study/admin_action_form.html", context)


class StimulusInline(admin.TabularInline):
    model = Stimulus
    extra = 0
    fields = ("preview", "source", "condition", "original_name", "provenance", "created_at")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="image")
    def preview(self, stimulus):
        return thumbnail(stimulus, 128)


@admin.register(Case)
class CaseAdmin(admin.ModelAdmin):
    form = CaseForm
    list_display = ("label", "study", "block", "true_condition", "cf_condition", "split", "screening", "images")
    list_filter = ("study", "block", "true_condition", "split")
    search_fields = ("label", "source_id")
    inlines = [StimulusInline]

    @admin.display(description="real / baseline / proposed")
    def images(self, case):
        return CaseInline.images(self, case)

    @admin.display(description="stimulus screening")
    def screening(self, case):
        """The screening its source image got when counterfactuals were generated (kept with the real image)."""
        real = next((s for s in case.stimuli.all() if s.source == Stimulus.Source.REAL), None)
        check = (real.provenance or {}).get("screening") if real is not None else None
        if not check:
            return "not screened yet"
        if not check.get("passed"):
            return "skipped: " + "; ".join(check.get("reasons", []))
        return f"passed (blank border {check.get('blank_border', 0):.0%})"

    def get_readonly_fields(self, request, obj=None):
        return ("study", "block", "split", "screening") if obj is not None else ()

    def save_model(self, request, obj, form, change):
        uploads = form.uploads()
        if change:
            fields = {name: form.cleaned_data[name] for name in form.changed_data if name in services.CASE_FIELDS}
            case = services.update_case(obj, by=request.user, **fields) if fields else obj
        else:
            data, name = uploads.pop("real")
            case = services.add_case(
                form.cleaned_data["study"],
                label=obj.label,
                block=obj.block,
                true_condition=obj.true_condition,
                cf_condition=obj.cf_condition,
                source_id=obj.source_id,
                real_image=data,
                real_image_name=name,
                by=request.user,
            )
            obj.__dict__.update(case.__dict__)
        for source, (data, name) in uploads.items():
            services.attach_stimulus(case, source, data, name=name, by=request.user)

    def delete_model(self, request, obj):
        services.delete_case(obj, by=request.user)

    def delete_queryset(self, request, queryset):
        for case in queryset:
            services.delete_case(case, by=request.user)


@admin.register(Invite)
class InviteAdmin(admin.ModelAdmin):
    list_display = ("note", "study", "link", "created_at", "used_at")
    list_filter = ("study",)
    readonly_fields = ("study", "link", "note", "created_at", "used_at")

    @admin.display(description="invitation link (single use)")
    def link(self, invite):
        return copyable(f"{settings.SITE_URL}/s/{invite.study.slug}/invite/{invite.token}/")

    def has_add_permission(self, request):
        return False


@admin.register(Participant)
class ParticipantAdmin(ExportPermission, admin.ModelAdmin):
    list_display = (
        "label",
        "study",
        "status",
        "progress",
        "simulated",
        "excluded",
        "exclusion_reason",
        "consented_at",
        "last_seen_at",
    )
    list_filter = ("study", "status", "simulated", "excluded")
    search_fields = ("external_id",)
    actions = ["exclude_selected", "include_selected", "delete_data", "export_participants", "export_answers"]
    exclude = ("token", "plan")
    readonly_fields = (
        "label",
        "study",
        "index",
        "external_id",
        "prolific_study_id",
        "prolific_session_id",
        "invite",
        "status",
        "seed",
        "cf_assignment",
        "n_answers",
        "simulated",
        "excluded",
        "exclusion_reason",
        "status_before_exclusion",
        "consented_at",
        "block1_started_at",
        "block2_started_at",
        "completed_at",
        "last_seen_at",
        "order",
    )

    @admin.display(description="progress")
    def progress(self, participant):
        return format_html(
            '<progress max="{}" value="{}" style="width:7em"></progress> {}/{}',
            participant.n_trials,
            participant.n_answers,
            participant.n_answers,
            participant.n_trials,
        )

    @admin.display(description="trial order")
    def order(self, participant):
        return ", ".join(f"{t.get('case', 'check')}/{t.get('source') or t['phase']}" for t in participant.plan)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return request.method in ("GET", "HEAD") and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False

    def has_exclude_permission(self, request):
        return _has_perms(request, "change_participant")

    def has_erase_permission(self, request):
        return _has_perms(request, "delete_participant")

    @admin.action(description="Exclude selected participants", permissions=["exclude"])
    def exclude_selected(self, request, queryset):
        for participant in queryset:
            services.exclude_participant(participant, "excluded by the researcher", by=request.user)
        self.message_user(request, f"{queryset.count()} excluded.", messages.SUCCESS)

    @admin.action(description="Include selected participants again", permissions=["exclude"])
    def include_selected(self, request, queryset):
        for participant in queryset:
            services.include_participant(participant, by=request.user)
        self.message_user(request, f"{queryset.count()} included.", messages.SUCCESS)

    @admin.action(
        description="Delete the selected participants' data (on request; audit-logged)", permissions=["erase"]
    )
    def delete_data(self, request, queryset):
        count = 0
        for participant in list(queryset):
            services.delete_participant_data(participant, by=request.user)
            count += 1
        self.message_user(request, f"Data of {count} participant(s) deleted.", messages.SUCCESS)

    @admin.action(description="Export participants CSV of their study", permissions=["export"])
    def export_participants(self, request, queryset):
        study = _one_study(self, request, queryset)
        return _csv_download(study, "participants") if study else None

    @admin.action(description="Export answers CSV of their study", permissions=["export"])
    def export_answers(self, request, queryset):
        study = _one_study(self, request, queryset)
        return _csv_download(study, "answers") if study else None


@admin.register(Response)
class ResponseAdmin(admin.ModelAdmin):
    list_display = ("participant", "sequence", "phase", "case", "diagnosis", "realness", "confidence", "answered_at")
    list_filter = ("participant__study", "phase")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return request.method in ("GET", "HEAD") and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    list_display = ("created_at", "actor_label", "action", "object_type", "object_id", "study")
    list_filter = ("action", "study")
    search_fields = ("actor_label", "object_id", "action")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return request.method in ("GET", "HEAD") and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False
