"""Admin forms of the stimulus set builder: a case is added with its real image, and each model's counterfactual
can be uploaded on the same page. Uploads are checked here (readable image, draft study) so that the admin shows a
form error; `services` normalises and stores them."""

from django import forms

from studyplatform import images
from studyplatform.models import Case, Study

IMAGE_HELP = "PNG, JPEG or any image format; it is re-encoded for blinding (grayscale, fixed size, no metadata)"
SOURCES = ("real", "baseline", "proposed")


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


class GenerateStimuliForm(forms.Form):
    """Which finished training runs make the study's counterfactuals (a background job does the work)."""

    baseline_run = forms.ModelChoiceField(queryset=None, help_text="the baseline generator")
    proposed_run = forms.ModelChoiceField(queryset=None, help_text="the proposed generator")
    samples = forms.IntegerField(min_value=1, max_value=32, initial=1, help_text="samples averaged per image")
    seed = forms.IntegerField(min_value=0, initial=0)

    def __init__(self, *args, **kwargs):
        from generator.models import TrainingRun

        super().__init__(*args, **kwargs)
        finished = TrainingRun.objects.filter(status=TrainingRun.Status.SUCCEEDED).order_by("-created_at")
        self.fields["baseline_run"].queryset = finished
        self.fields["proposed_run"].queryset = finished


class InviteForm(forms.Form):
    count = forms.IntegerField(min_value=1, max_value=1000, initial=10)
    note = forms.CharField(max_length=200, required=False)
