"""A reader study: its stimulus set (cases and their images), its participants, their answers and the audit log.

The participant's whole session is planned when they consent: `Participant.plan` holds every trial in the order the
server will serve it (with its opaque trial id and randomised slider start), so the order is reproducible from the
stored seed and visible to researchers, and the next trial is simply the first one without a stored answer.
"""

import uuid

from django.conf import settings
from django.db import models

from studycolumns import questions

CONDITIONS = ("healthy", "effusion", "pneumonia")
CONDITION_CHOICES = [("healthy", "healthy"), ("effusion", "pleural effusion"), ("pneumonia", "pneumonia")]

PAPER_REASONS = [
    "The lungs or other organs look too symmetrical",
    "Anatomical structures look slightly distorted or unnatural",
    "The image as a whole feels synthetic or computer-generated",
    "The pathology does not look like a typical clinical presentation",
    "Shading or lighting is subtly inconsistent",
    "The image is too smooth or lacks natural texture",
    "The image is overly clean or free of noise",
]


def default_diagnosis_labels():
    return {"healthy": "Healthy (no finding)", "effusion": "Pleural effusion", "pneumonia": "Pneumonia"}


def default_reasons():
    return list(PAPER_REASONS)


def default_attention_checks():
    return []


class Study(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft"
        OPEN = "open"
        CLOSED = "closed"

    title = models.CharField(max_length=200)
    slug = models.SlugField(
        max_length=60, unique=True, help_text="the part of the participant link after /s/ (letters, digits, hyphens)"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT, db_index=True)

    class Block1Design(models.TextChoices):
        PAIRED = "paired", "paired (the paper's: each patient as real, baseline and proposed)"
        COUNTERBALANCED = "counterbalanced", "counterbalanced (each patient once per participant, Latin square)"

    block1_design = models.CharField(
        max_length=16,
        choices=Block1Design.choices,
        default=Block1Design.PAIRED,
        help_text="how Block-1 patients are shown to each participant",
    )

    consent_text = models.TextField(blank=True, help_text="information sheet and consent statement")
    instructions_block1 = models.TextField(blank=True)
    instructions_block2 = models.TextField(blank=True)
    debrief_text = models.TextField(blank=True, help_text="shown with the completion code at the end")

    diagnosis_labels = models.JSONField(
        default=default_diagnosis_labels, help_text="label shown for each diagnosis: healthy, effusion, pneumonia"
    )
    reasons = models.JSONField(
        default=default_reasons, help_text="checklist of reasons an image may be synthetic (one string per reason)"
    )
    realness_min = models.PositiveSmallIntegerField(default=1)
    realness_max = models.PositiveSmallIntegerField(default=100)
    confidence_min = models.PositiveSmallIntegerField(default=1)
    confidence_max = models.PositiveSmallIntegerField(default=6)
    attention_checks = models.JSONField(
        default=default_attention_checks,
        blank=True,
        help_text='optional instructed-response checks in Block 1: [{"after": 12, "instruction": "Select '
        'Pneumonia for this question.", "expected": "pneumonia"}]; a participant who fails one is excluded',
    )

    block1_patients = models.PositiveSmallIntegerField(default=12, help_text="patients in Block 1 (x3 images)")
    block2_cases = models.PositiveSmallIntegerField(default=12, help_text="cases in Block 2")
    working_size = models.PositiveSmallIntegerField(
        default=192, help_text="every stimulus is resampled to this size first (the generator's resolution)"
    )
    display_size = models.PositiveSmallIntegerField(default=512, help_text="then to this size for display")

    prolific_study_id = models.CharField(
        max_length=64, blank=True, help_text="when set, the STUDY_ID of the entry link must equal it"
    )
    completion_code = models.CharField(max_length=64, blank=True)
    completion_url = models.URLField(
        blank=True, help_text="e.g. https://app.prolific.com/submissions/complete?cc=CODE (shown as a button)"
    )
    time_limit_minutes = models.PositiveIntegerField(
        default=60, help_text="a session idle for longer than this is timed out and excluded"
    )

    participant_counter = models.PositiveIntegerField(default=0, editable=False)
    sessions_refused = models.PositiveIntegerField(
        default=0, editable=False, help_text="session starts refused by the rate limits (per client, per study)"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "studies"
        permissions = [("export_raw_ids", "Can export raw Prolific ids")]

    def __str__(self):
        return self.title

    @property
    def diagnosis_choices(self):
        return [(value, self.diagnosis_labels.get(value, value)) for value in CONDITIONS]

    @property
    def block1_images(self):
        """Block-1 images each participant sees: every patient three times (paired) or once (counterbalanced)."""
        per_patient = 1 if self.block1_design == self.Block1Design.COUNTERBALANCED else 3
        return per_patient * self.block1_patients


class Case(models.Model):
    """A patient in Block 1 (real image + baseline and proposed counterfactuals of one target condition) or a case in
    Block 2 (real diseased image + each model's "if healthy" counterfactual)."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="cases")
    block = models.PositiveSmallIntegerField(choices=[(1, "Block 1"), (2, "Block 2")])
    label = models.CharField(max_length=40, help_text="researcher's name for the case, e.g. P01 (never shown)")
    source_id = models.CharField(max_length=200, blank=True, help_text="data set image id, e.g. 00000100_000.png")
    true_condition = models.CharField(max_length=10, choices=CONDITION_CHOICES)
    cf_condition = models.CharField(
        max_length=10,
        choices=CONDITION_CHOICES,
        help_text="condition both counterfactuals show (Block 2: always healthy)",
    )
    position = models.PositiveSmallIntegerField(default=0, help_text="order used by the counterbalancing")
    split = models.CharField(
        max_length=10,
        blank=True,
        help_text="data-set split the source image comes from (train, valid, test); blank when uploaded by hand",
    )

    class Meta:
        ordering = ["block", "position", "label"]
        constraints = [models.UniqueConstraint(fields=["study", "label"], name="case_label_unique_in_study")]

    def __str__(self):
        return f"{self.label} (block {self.block})"


class Stimulus(models.Model):
    class Source(models.TextChoices):
        REAL = "real"
        BASELINE = "baseline"
        PROPOSED = "proposed"

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="stimuli")
    source = models.CharField(max_length=10, choices=Source.choices)
    condition = models.CharField(max_length=10, choices=CONDITION_CHOICES, help_text="the condition the image shows")
    token = models.CharField(max_length=64, unique=True, editable=False, help_text="opaque id in the image URL")
    file = models.CharField(max_length=200, editable=False, help_text="path under MEDIA_ROOT (random name)")
    sha256 = models.CharField(max_length=64, editable=False)
    original_name = models.CharField(max_length=300, blank=True, help_text="uploaded file name (staff only)")
    provenance = models.JSONField(default=dict, blank=True, help_text="run, checkpoint, seed, expert probabilities")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["case", "source"]
        verbose_name_plural = "stimuli"
        constraints = [models.UniqueConstraint(fields=["case", "source"], name="one_stimulus_per_source_per_case")]

    def __str__(self):
        return f"{self.case.label} {self.source}"


class Invite(models.Model):
    """A single-use link /s/<slug>/invite/<token>/ for a participant recruited outside Prolific."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="invites")
    token = models.CharField(max_length=64, unique=True, editable=False)
    note = models.CharField(max_length=200, blank=True, help_text="who the link was sent to (staff only)")
    created_at = models.DateTimeField(auto_now_add=True)
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"invite {self.note or self.pk}"


class Participant(models.Model):
    class Status(models.TextChoices):
        STARTED = "started"
        BLOCK1 = "block1", "in block 1"
        BLOCK2 = "block2", "in block 2"
        COMPLETED = "completed"
        TIMED_OUT = "timed_out", "timed out"
        WITHDRAWN = "withdrawn"
        EXCLUDED = "excluded"

    ACTIVE = (Status.STARTED, Status.BLOCK1, Status.BLOCK2)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="participants")
    index = models.PositiveIntegerField(help_text="1, 2, 3 ... within the study; drives the counterbalancing")
    token = models.CharField(max_length=64, unique=True, editable=False)
    resume_code = models.CharField(
        max_length=16,
        blank=True,
        editable=False,
        help_text="short code shown to the participant at the start; continues the session in another browser",
    )
    external_id = models.CharField(max_length=100, blank=True, help_text="PROLIFIC_PID (personal data)")
    prolific_study_id = models.CharField(max_length=100, blank=True)
    prolific_session_id = models.CharField(max_length=100, blank=True)
    invite = models.OneToOneField(Invite, null=True, blank=True, on_delete=models.SET_NULL, related_name="participant")

    status = models.CharField(max_length=12, choices=Status.choices, default=Status.STARTED, db_index=True)
    simulated = models.BooleanField(
        default=False, db_index=True, help_text="made by simulate_participants, not a real reader"
    )
    seed = models.BigIntegerField()
    plan = models.JSONField(default=list, help_text="every trial in serving order")
    cf_assignment = models.JSONField(default=dict, help_text="Block-2 case label -> model shown")
    n_answers = models.PositiveIntegerField(default=0)
    excluded = models.BooleanField(default=False)
    exclusion_reason = models.CharField(max_length=200, blank=True)
    status_before_exclusion = models.CharField(
        max_length=12,
        choices=Status.choices,
        blank=True,
        help_text="the status a researcher's exclusion replaced; 'include again' restores it",
    )

    consented_at = models.DateTimeField()
    block1_started_at = models.DateTimeField(null=True, blank=True)
    block2_started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField()

    class Meta:
        ordering = ["study", "index"]
        constraints = [
            models.UniqueConstraint(fields=["study", "index"], name="participant_index_unique_in_study"),
            models.UniqueConstraint(
                fields=["study", "external_id"],
                condition=~models.Q(external_id=""),
                name="one_session_per_prolific_pid",
            ),
        ]

    def __str__(self):
        return self.label

    @property
    def label(self):
        return f"P{self.index:03d}"

    @property
    def n_trials(self):
        return len(self.plan)

    @property
    def is_active(self):
        return self.status in self.ACTIVE


class Response(models.Model):
    """One answer. (participant, sequence) is unique: a trial can be answered once, whatever the browser does."""

    class Phase(models.TextChoices):
        BLOCK1 = "block1"
        PRE = "pre"
        POST = "post"
        ATTENTION = "attention"

    participant = models.ForeignKey(Participant, on_delete=models.CASCADE, related_name="responses")
    sequence = models.PositiveIntegerField(help_text="position of the trial in the participant's plan (0-based)")
    block = models.PositiveSmallIntegerField()
    phase = models.CharField(max_length=10, choices=Phase.choices)
    trial_index = models.PositiveSmallIntegerField(help_text="1-based position within the block (Block 2: case)")
    case = models.ForeignKey(Case, null=True, on_delete=models.PROTECT, related_name="responses")
    stimulus = models.ForeignKey(Stimulus, null=True, on_delete=models.PROTECT, related_name="responses")
    cf_stimulus = models.ForeignKey(Stimulus, null=True, on_delete=models.PROTECT, related_name="+")
    cf_model = models.CharField(max_length=10, blank=True)
    diagnosis = models.CharField(max_length=10, choices=CONDITION_CHOICES)
    realness = models.PositiveSmallIntegerField(null=True)
    slider_start = models.PositiveSmallIntegerField(null=True)
    reasons = models.JSONField(default=list, help_text="1-based numbers of the ticked reasons")
    confidence = models.PositiveSmallIntegerField(null=True)
    rt_ms = models.PositiveIntegerField()
    other_answers = models.JSONField(
        default=dict,
        blank=True,
        help_text="answers to the questions without a column of their own (studycolumns.questions), by name",
    )
    answered_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["participant", "sequence"]
        constraints = [
            models.UniqueConstraint(fields=["participant", "sequence"], name="one_answer_per_trial"),
        ]

    def __str__(self):
        return f"{self.participant} #{self.sequence} {self.phase}"

    @staticmethod
    def answer_fields(clean, trial):
        """The fields of a new Response that store `clean` ({question name: value}, what validation returned for
        the trial's phase) and the random starts of the trial's sliders: each in its own column where the question
        has one, the others by name in `other_answers`."""
        fields, other = {}, {}
        for question in questions.QUESTIONS:
            stored = fields if question.own_column else other
            if question.name in clean:
                stored[question.name] = clean[question.name]
            if question.start_field and trial.get(question.start_field) is not None:
                stored[question.start_field] = trial[question.start_field]
        return {**fields, "other_answers": other}

    def _stored(self, question, name, default=None):
        """The value stored under `name` for `question`: its own column, or its key in `other_answers`."""
        return getattr(self, name) if question.own_column else self.other_answers.get(name, default)

    def answer_to(self, question):
        """The stored answer to `question`; its kind's empty answer where the trial's phase did not ask it."""
        return self._stored(question, question.name, question.empty)

    def start_of(self, question):
        """Where `question`'s slider started on the trial page (None for other kinds)."""
        return self._stored(question, question.start_field) if question.start_field else None


class AuditLog(models.Model):
    """Who changed what, when. Rows refer to objects by type and id so that deleting the object keeps its history."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_label = models.CharField(max_length=150, help_text="user name, participant label or 'system'")
    action = models.CharField(max_length=60, db_index=True)
    study = models.ForeignKey(Study, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    object_type = models.CharField(max_length=40)
    object_id = models.CharField(max_length=64)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action} {self.object_type}"
