import uuid

from django.db import models

from generator.training.budget import describe_under_training


class Dataset(models.Model):
    """A registered data set: where it lives, how it is read, and what it contains."""

    class Kind(models.TextChoices):
        PHANTOM = "phantom", "Phantom chest X-rays (MIMIC graph)"
        PHANTOM_CXR8 = "phantom-cxr8", "Phantom chest X-rays (ChestX-ray8 graph)"
        NIH = "nih", "NIH ChestX-ray8/14"
        MIMIC = "mimic", "MIMIC-CXR-JPG"

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    root = models.CharField(max_length=500, help_text="folder in the data set's native layout (or the phantom cache)")
    resolution = models.PositiveIntegerField(default=64)
    options = models.JSONField(default=dict, blank=True, help_text="loader options: views, n, seed, label rules")
    graph = models.JSONField(default=dict, blank=True, help_text="the causal graph of the parents")
    split_counts = models.JSONField(default=dict, blank=True)
    label_counts = models.JSONField(default=dict, blank=True)
    parent_stats = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.kind}, {self.resolution}px)"


class TrainingRun(models.Model):
    """One generator training run; its preset, seed and code version make every stimulus traceable."""

    class Variant(models.TextChoices):
        BASELINE = "baseline"
        EXPERT = "expert"
        EXPERT_AL = "expert-al", "Expert-AL"

    class Status(models.TextChoices):
        CREATED = "created"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.SlugField(max_length=100, unique=True)
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="runs")
    variant = models.CharField(max_length=20, choices=Variant.choices, default=Variant.BASELINE)
    preset = models.CharField(max_length=32, default="cpu-64")
    config = models.JSONField(default=dict, blank=True, help_text="the full preset and options used")
    seed = models.IntegerField(default=0)
    code_version = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CREATED)
    stage = models.CharField(max_length=32, blank=True, help_text="last stage completed or in progress")
    history = models.JSONField(default=dict, blank=True, help_text="loss curves per stage")
    checkpoints = models.JSONField(default=dict, blank=True, help_text="stage/round -> checkpoint path")
    metrics = models.JSONField(default=dict, blank=True, help_text="evaluation results")
    under_trained = models.JSONField(
        default=dict,
        blank=True,
        help_text="stages a time budget stopped below half their planned steps: stage -> steps reached and planned",
    )
    error = models.TextField(blank=True)
    job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.variant}, {self.preset})"

    @property
    def training_warning(self):
        """Plain words when the run is under-trained, else ""."""
        return describe_under_training(self.under_trained)

    @property
    def evaluation_warnings(self):
        """(checkpoint label, warning) for everything the run's evaluations say they cannot judge."""
        return [
            (label, warning)
            for label, result in sorted((self.metrics or {}).items())
            if isinstance(result, dict)
            for warning in (result.get("judgement") or {}).get("warnings", [])
        ]
