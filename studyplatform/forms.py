"""Admin forms of the stimulus set builder: a case is added with its real image, and each model's counterfactual
can be uploaded on the same page. Uploads are checked here (readable image, draft study) so that the admin shows a
form error; `services` normalises and stores them."""

from django import forms

from studyplatform import images, services
from studyplatform.models import Case, Study

IMAGE_HELP = "PNG, JPEG or any image format; it is re-encoded for blinding (grayscale, fixed size, no metadata)"
SOURCES = ("real", "baseline", "proposed")


class StudyForm(forms.ModelForm):
    """The study's settings. Once the study has opened the admin shows the frozen settings read-only; a change that
    still reaches the form (the study opened while the page was open) is refused with a form error."""

    completion_url = forms.URLField(
        required=False, assume_scheme="https", help_text=Study._meta.get_field("completion_url").help_text
    )

    class Meta:
        model = Study
        fields = [
            "title",
            "slug",
            "consent_text",
            "instructions_block1",
            "instructions_block2",
            "debrief_text",
            "diagnosis_labels",
            "reasons",
            "realness_min",
            "realness_max",
            "confidence_min",
            "confidence_max",
            "attention_checks",
            "block1_design",
            "block1_patients",
            "block2_cases",
            "working_size",
            "display_size",
            "prolific_study_id",
            "completion_code",
            "completion_url",
            "time_limit_minutes",
        ]
        widgets = {"block1_design": forms.RadioSelect}
        help_texts = {
            "block1_patients": "patients in Block 1; each participant sees 3 images of each (paired design) or 1 "
            "(counterbalanced design, a multiple of 3 patients)"
        }

    def _post_clean(self):
        super()._post_clean()
        # Settings that contradict each other (e.g. an attention check after the last Block-1 image of the chosen
        # design) are a form error, not a failed save.
        for problem in services._check_study_settings(self.instance):
            field = "attention_checks" if problem.startswith("attention check") else None
            self.add_error(field if field in self.fields else None, problem)
        if self.instance.pk is None:
            return
        stored = Study.objects.filter(pk=self.instance.pk).first()
        for name in services.frozen_changes(self.instance, stored):
            message = f"{name} cannot change once the study has opened (it is {stored.status})."
            if name in self.fields:
                self.add_error(name, message)
            else:
                self.add_error(None, message)


class CaseForm(forms.ModelForm):
    real_image = forms.FileField(required=False, help_text=IMAGE_HELP)
    baseline_image = forms.FileField(required=False, help_text="the baseline model's counterfactual")
    proposed_image = forms.FileField(required=False, help_text="the proposed model's counterfactual")

    class Meta:
        model = Case
        fields = ["study", "block", "label", "source_id", "true_condition", "cf_condition", "position"]

    def clean(self):
        cleaned = super().clean()
        study = cleaned.get("study") or getattr(self.instance, "study", None)
        if study is not None and study.status != Study.Status.DRAFT:
            raise forms.ValidationError("The study is not a draft any more: its stimulus set cannot change.")
        if self.instance.pk is None and not cleaned.get("real_image"):
            self.add_error("real_image", "A new case needs its real image.")
        if cleaned.get("block") == 2 and cleaned.get("true_condition") == "healthy":
            self.add_error("true_condition", "Block-2 cases show effusion or pneumonia.")
        if cleaned.get("block") == 2 and cleaned.get("cf_condition") not in (None, "healthy"):
            self.add_error("cf_condition", "Block-2 counterfactuals show the patient as healthy.")
        for source in SOURCES:
            upload = cleaned.get(f"{source}_image")
            if upload:
                try:
                    images.normalise(upload.read(), name=upload.name, working_size=16, display_size=16)
                except images.ImageRejected as exc:
                    self.add_error(f"{source}_image", str(exc))
                upload.seek(0)
        return cleaned

    def uploads(self):
        """{source: (bytes, file name)} of the images uploaded with this form."""
        found = {}
        for source in SOURCES:
            upload = self.cleaned_data.get(f"{source}_image")
            if upload:
                upload.seek(0)
                found[source] = (upload.read(), upload.name)
        return found


class CaseInlineForm(CaseForm):
    """A case added from the study page: its settings and real image. Its counterfactuals are generated (an action
    on the study) or uploaded on the case's own page."""

    baseline_image = None
    proposed_image = None

    class Meta(CaseForm.Meta):
        fields = ["label", "block", "source_id", "true_condition", "cf_condition"]


class GenerateStimuliForm(forms.Form):
    """Which finished training runs make the study's counterfactuals (a background job does the work)."""

    baseline_run = forms.ModelChoiceField(queryset=None, help_text="a finished run of the baseline generator")
    proposed_run = forms.ModelChoiceField(
        queryset=None, help_text="a finished run of the proposed generator (expert constraint, with active learning)"
    )
    samples = forms.IntegerField(min_value=1, max_value=32, initial=1, help_text="samples averaged per image")
    seed = forms.IntegerField(min_value=0, initial=0)
    extra_splits = forms.MultipleChoiceField(
        choices=[("valid", "validation split (the models were tuned on it)"), ("train", "training split")],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Also allow images from",
        help_text="Source images come from the held-out test split; tick a split here only on purpose.",
    )
    allow_children = forms.BooleanField(required=False, label="Accept patients under 18")
    allow_any_view = forms.BooleanField(required=False, label="Accept views other than frontal (PA/AP)")
    allow_blank_border = forms.BooleanField(
        required=False, label="Accept a large blank border (over 20% of the image area)"
    )
    no_screening = forms.BooleanField(required=False, label="Turn the stimulus screening off")

    def __init__(self, *args, **kwargs):
        from generator.models import TrainingRun

        super().__init__(*args, **kwargs)
        finished = TrainingRun.objects.filter(status=TrainingRun.Status.SUCCEEDED).order_by("-created_at")
        self.fields["baseline_run"].queryset = finished.filter(variant=TrainingRun.Variant.BASELINE)
        self.fields["proposed_run"].queryset = finished.exclude(variant=TrainingRun.Variant.BASELINE)

    def stimulus_options(self):
        """The job's `splits` and `screening` parameters: the test split and the default screening
        (generator.data.screening), with a criterion turned off (None) only where the researcher ticked it."""
        data = self.cleaned_data
        splits = ["test", *[name for name in ("valid", "train") if name in data["extra_splits"]]]
        if data["no_screening"]:
            return {"splits": splits, "screening": False}
        relaxed = {"min_age": "allow_children", "views": "allow_any_view", "max_blank_border": "allow_blank_border"}
        return {"splits": splits, "screening": {rule: None for rule, field in relaxed.items() if data[field]}}


class InviteForm(forms.Form):
    count = forms.IntegerField(min_value=1, max_value=1000, initial=10)
    note = forms.CharField(max_length=200, required=False)
