"""What a generator job is asked to do, as one dataclass per job kind.

A management command builds the request once from its options; in the foreground it hands the request to the
service, with `--background` it stores `to_params()` as the Job's parameters and the task rebuilds the same request
with `from_params`. Both paths therefore see every option, and a new option is one new field.
"""

from dataclasses import asdict, dataclass, field, fields


class JobParameters:
    """A request that travels as the JSON parameters of a Job and is rebuilt from them in the worker."""

    def to_params(self):
        """The request as the JSON parameters of a Job."""
        return asdict(self)

    @classmethod
    def from_params(cls, params):
        """The request a Job's parameters describe; unknown parameter names are refused."""
        unknown = set(params) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown parameters {', '.join(sorted(unknown))}")
        return cls(**params)


@dataclass
class TrainingRequest(JobParameters):
    """Train a recorded run (its configuration is the RunConfig stored on the run), or resume it."""

    run: str
    resume: bool = False


@dataclass
class CounterfactualRequest(JobParameters):
    """Counterfactuals of real images: image i under intervention do[i].

    Images are a data set's (`ids`; the run's own data set unless `dataset` names another) or files (`images`, whose
    parents the run's predictors read). `checkpoint` None is the run's final model; image i is drawn under seed
    `seed + i`; `expert` names the expert annotating the items (None: the run's own, else the pretrained one).
    """

    run: str
    do: list
    ids: list = field(default_factory=list)
    images: list = field(default_factory=list)
    dataset: str | None = None
    out_dir: str | None = None
    samples: int = 1
    checkpoint: str | None = None
    seed: int = 0
    expert: str | None = None
    model_role: str | None = None

    def __post_init__(self):
        if bool(self.ids) == bool(self.images):
            raise ValueError("give either data-set image ids or image files, not both and not neither")
        if len(self.do) != len(self.ids or self.images):
            raise ValueError(f"{len(self.do)} interventions for {len(self.ids or self.images)} images")
        if self.samples < 1:
            raise ValueError("samples must be at least 1")

    @classmethod
    def every_image_under_each(cls, run, do, *, ids=(), images=(), **options):
        """Each image under each intervention in `do`, image by image."""
        sources = list(ids or images)
        expanded = [source for source in sources for _ in do]
        return cls(
            run=run,
            do=[spec for _ in sources for spec in do],
            ids=expanded if ids else [],
            images=expanded if images else [],
            **options,
        )


@dataclass
class EvaluationRequest(JobParameters):
    """Evaluate runs, or with `compare` write the side-by-side table of the runs (evaluating those without metrics).

    `checkpoint` None is each run's final model, "all" every model checkpoint. `json_path` and `figures_dir` apply when
    one run is evaluated without `compare`; `compare_dir` None puts the table under ARTIFACTS_ROOT/comparisons/<time>.
    """

    runs: list
    checkpoint: str | None = None
    n: int = 256
    seed: int = 0
    n_boot: int = 1000
    json_path: str | None = None
    figures_dir: str | None = None
    expert: str | None = None
    expert_steps: int = 400
    predictor_epochs: int = 8
    compare: bool = False
    compare_dir: str | None = None

    def __post_init__(self):
        if not self.runs:
            raise ValueError("name at least one run to evaluate")
        if self.n < 1 or self.n_boot < 1:
            raise ValueError("n and n_boot must be at least 1")
