"""What a study job is asked to do, as one dataclass per job kind (the study-side twin of generator.services.requests).

Light on purpose: the admin builds the request in the web process, which never loads the generator's networks; the
worker rebuilds it from the Job's parameters and hands it to `studyplatform.stimuli`.
"""

from dataclasses import dataclass, field

from generator.services.requests import JobParameters


@dataclass
class StimulusRequest(JobParameters):
    """Both models' counterfactuals for a study's cases: the job parameters of `generate_stimuli`.

    `case_ids` empty is every case with a data-set image id. Source images come from `splits` (None: the test split)
    and pass `screening` (None: the default rules, False: off, or a mapping that relaxes some rules).
    """

    study_id: int
    baseline_run: str
    proposed_run: str
    case_ids: list = field(default_factory=list)
    baseline_checkpoint: str | None = None
    proposed_checkpoint: str | None = None
    samples: int = 1
    seed: int = 0
    expert: str | None = None
    splits: list | None = None
    screening: dict | bool | None = None

    def __post_init__(self):
        if self.samples < 1:
            raise ValueError("samples must be at least 1")
