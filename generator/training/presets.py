"""Hyperparameters of the generator, one dataclass per named preset.

The registry (`PRESETS`) is where a run's settings come from when it is created, and only then: the run stores a
snapshot of its preset (with any changes made for that run) and every checkpoint carries it, so training, resuming
and loading read the snapshot, and any counterfactual traces back to the exact settings whatever the registry holds
later. `dataclasses.replace(get_preset(name), field=value)` makes a snapshot with changes.

The network runs at the resolutions in `resolutions` (top-down order, 1 px first, the image resolution last).
Stochastic latents live only at `latent_resolutions`; every other resolution has deterministic blocks. Keeping the
latents coarse on the small presets is deliberate: fine latents can carry a lesion themselves, and then the decoder
learns to ignore the disease label (the counterfactual would not change).
"""

from dataclasses import asdict, dataclass, field, fields


@dataclass
class Preset:
    name: str
    resolution: int
    resolutions: tuple  # top-down, from 1 px to `resolution`
    widths: tuple  # feature channels at each entry of `resolutions`
    blocks: tuple  # residual blocks at each entry of `resolutions`
    latent_resolutions: tuple  # subset of `resolutions` that carries stochastic latents
    z_channels: int = 16
    parent_embedding: int = 32
    # VDVAE's bottleneck residual blocks (1x1, 3x3, 3x3, 1x1 at a quarter of the width) instead of two full-width 3x3
    bottleneck: bool = False
    # additive lesion branch (see generator.causal.hvae): 0 = the disease modulates every top-down block, as in the
    # paper; n > 0 = it enters only an n-block branch added to the trunk's output and silent for "no finding"
    lesion_blocks: int = 0
    lesion_node: str = "disease"
    # with a lesion branch: weight of the anatomy adversary (generator.training.critics.AnatomyAdversary), which keeps
    # the disease out of the trunk's image so that the branch, and only the branch, draws the lesion (0 = off)
    anatomy_weight: float = 0.0
    # with a lesion branch: size of the lesion latent z_L per disease class (0 = none). z_L is the lesion's own
    # exogenous noise (side, extent, texture): N(0, I) prior, inferred from the image, read only by the branch, so a
    # removal subtracts the lesion seen and an addition draws one lesion from the prior
    lesion_latent: int = 0
    # with a lesion branch: channels of a SPATIAL lesion code per disease class, one N(0, I) value per channel and
    # position of the encoder's grid at up to 16 px (0 = none). A vector code holds where a lesion is and how large;
    # a texture (a consolidation's mottling) has as many degrees of freedom as it has patches, and only a map holds it
    lesion_latent_map: int = 0
    # with a lesion branch: rectify the branch's map (an opacity only adds attenuation), so it is exactly zero
    # outside the lesion and a counterfactual leaves every other pixel as it was
    lesion_support: bool = False
    # with a lesion branch and its support gate: the branch also draws a log-scale offset of the pixel distribution,
    # inside the lesion's support only. What the lesion code cannot hold (a consolidation's fine mottling, a meniscus's
    # exact edge) otherwise stays in the standardised residual, and a removal carries it over unchanged; with a scale
    # of its own the lesion's residual is a wider distribution, which a removal narrows back to the anatomy's
    lesion_scale: bool = False
    # with a lesion branch and its support gate: how the lesion meets the anatomy. "add": the branch's rectified map is
    # added to the trunk's mean (an opacity adds attenuation along the ray). "composite": the branch draws an optical
    # depth tau >= 0 (rectified, so exactly zero outside the lesion) and a density d; the mean is
    # anatomy + alpha * (d - anatomy) with alpha = 1 - exp(-tau): fluid or consolidation that fills the airspace
    # replaces what the ray saw there (the ribs and the dome vanish under an effusion), and a removal restores the
    # trunk's anatomy under it
    lesion_blend: str = "add"
    # with an additive rectified lesion map: the branch also draws an attenuation a in [0, 1] and, on the map's
    # support only, takes a times the anatomy's fine structure (the trunk's mean less its Gaussian blur) off the
    # image. Fluid or consolidation hides the ribs and vessels behind it; a smooth map cannot draw that, so a removal
    # would leave the ribs hidden under an effusion, and an addition would leave them showing through the fluid
    lesion_attenuates: bool = False
    # with a lesion branch: the branch reads the trunk's features without sending gradient into them. Otherwise the
    # likelihood teaches the trunk to leave hints of the lesion in its features (its image stays lesion-free for the
    # anatomy adversary), the branch learns to draw from those hints, and an addition to a healthy image, whose
    # features have none, comes out faint whatever the lesion code says
    lesion_detached: bool = False
    # with a lesion branch: what the branch reads of the anatomy. "features": the trunk's top features; "anatomy": the
    # trunk's lesion-free pixel mean (no gradient back), which the anatomy adversary keeps free of lesion hints, so
    # where and how large a lesion is can only come from the lesion code
    lesion_reads: str = "features"
    # with a lesion latent: the KL of a diseased image's lesion code counts as at least this many nats in training
    # (free bits), so the code is used instead of collapsing to the prior
    lesion_free_bits: float = 0.0
    # with a lesion latent: weight of the lesion code's KL in the training objective (1 = the ELBO). Below 1 the code
    # is cheaper than the pixel residual for what it can hold (a consolidation's mottling, which otherwise stays in
    # the residual and survives a removal); the reported free energy always counts the KL in full
    lesion_kl_weight: float = 1.0
    # with a lesion branch: weight of mean|lesion map| in the ELBO stage's objective (nats per pixel per unit of map).
    # The likelihood only sees anatomy + lesion and cannot tell a veil over the whole lung drawn by the branch from
    # the same veil drawn by the trunk; this breaks the tie towards the smallest lesion layer
    lesion_sparsity: float = 0.0
    # optimisation of the image model
    lr: float = 5e-5
    betas: tuple = (0.9, 0.9)
    weight_decay: float = 0.1
    warmup_steps: int = 100
    grad_clip: float = 350.0
    skip_threshold: float = 500.0
    ema_rate: float = 0.999
    batch_size: int = 32
    # augmentation of real images
    pad: int = 9
    random_crop: bool = True
    hflip: bool = True
    # latent independence: an adversary reads the abducted latents; the encoder is penalised when it can predict the
    # discrete parents from them (exogenous noise must be independent of the parents)
    independence_weight: float = 1.0
    adversary_lr: float = 1e-3
    # parent model and predictors
    parents_lr: float = 1e-2
    parents_batch_size: int = 256
    predictor_width: int = 16
    predictor_lr: float = 1e-3
    # counterfactual stage (Eq. 9)
    cf_lr: float = 5e-5
    lagrange_lr: float = 0.1
    lagrange_init: float = 1.0
    lagrange_damping: float = 10.0
    constraint_slack: float = 0.01  # relative tolerance on the measured validation free energy
    # minimal-change penalty on |x_cf - x| in counterfactual training (0 = the paper's objective): the cheapest way
    # to convince the predictors then is to change the lesion itself, not to paint a pattern over the whole image
    effect_penalty: float = 0.0
    # with a lesion branch: counterfactual training changes the branch only and intervenes on the lesion node only
    # (generator.training.counterfactual_stage.branch_parameters says why)
    cf_branch_only: bool = False
    # with a lesion branch: weight of the lesion critic (generator.training.critics.LesionCritic) on the maps the branch
    # adds under an intervention, so additions look like the lesions it draws on real diseased images (0 = off)
    lesion_critic_weight: float = 0.0
    # which interventions counterfactual training asks the predictors to judge. "marginal" (the paper): a random parent
    # takes a value drawn from its marginal, so removals, additions and swaps alike. "additions" (needs
    # `cf_branch_only`): only healthy images are intervened on, each given a disease class drawn uniformly, and the
    # branch's lesion posterior stays as the ELBO stage left it. A removal subtracts the lesion abducted from the
    # image, which the likelihood has already fitted; only an addition, drawn from the prior code, needs the predictors
    cf_interventions: str = "marginal"
    # weight of mean|lesion map - map of the model the stage started from| on the diseased images of each
    # counterfactual-training batch (same abducted codes and features): holds the branch's drawing of real lesions,
    # and with it every removal, where it was while the stage learns what to add (0 = off; the free-energy constraint
    # alone then holds it)
    cf_removal_anchor: float = 0.0
    # which model the removal anchor holds the branch to. "stage": the model each counterfactual training starts from,
    # so in the proposed model every active-learning round anchors to the round before it and drifts can add up over
    # the rounds; "elbo": the run's ELBO-stage model (hvae.pt) in the counterfactual stage and in every round
    cf_anchor_reference: str = "stage"
    # with the anatomy adversary: it also reads the trunk's pixel log-sigma. Otherwise the trunk may tell the disease
    # by its pixel scale (a wider distribution where a lesion's texture is), which keeps the texture in the residual,
    # and a removal, which changes only the mean, leaves it in place (on in cpu-64: docs/generator.md measures it)
    anatomy_reads_scale: bool = False
    # with `cf_interventions="additions"`: the judge's probability of the added disease beyond which an addition earns
    # nothing more (0 = off, the plain log-likelihood); the minimal-change penalty then pulls the addition back to the
    # least change that convinces the judge. At 0.95 on three phantom seeds it changed nothing measurable: the
    # additions are not over-rewarded by the log-likelihood (docs/generator.md)
    cf_confidence: float = 0.0
    # with a lesion branch and a lesion latent: weight of a lesion critic in the ELBO stage. Each healthy image of a
    # batch also gets an addition drawn from the PRIOR lesion code (a random disease class), and the branch is
    # trained to make those maps indistinguishable from the maps it draws for real lesions from their posterior codes:
    # the likelihood only ever sees posterior codes, so without this nothing asks a prior draw to draw a whole lesion
    elbo_lesion_critic_weight: float = 0.0
    # the run's final model is the checkpoint (ELBO stage or counterfactual stage) whose counterfactuals score best
    # on the validation split (generator.training.selection), not simply the last one
    select_final: bool = False
    # default steps per stage and share of a wall-clock budget
    steps: dict = field(
        default_factory=lambda: {"parents": 500, "predictors": 500, "hvae": 2000, "counterfactual": 500}
    )
    budget_shares: dict = field(
        default_factory=lambda: {"parents": 0.03, "predictors": 0.12, "hvae": 0.6, "counterfactual": 0.25}
    )
    checkpoint_every: int = 200
    eval_batches: int = 4

    def __post_init__(self):
        self.resolutions = tuple(self.resolutions)
        self.widths = tuple(self.widths)
        self.blocks = tuple(self.blocks)
        self.latent_resolutions = tuple(self.latent_resolutions)
        self.betas = tuple(self.betas)
        if not (len(self.resolutions) == len(self.widths) == len(self.blocks)):
            raise ValueError(f"preset {self.name!r}: resolutions, widths and blocks must have the same length")
        if self.resolutions[0] != 1 or self.resolutions[-1] != self.resolution:
            raise ValueError(f"preset {self.name!r}: resolutions must run from 1 to {self.resolution}")
        if self.lesion_kl_weight <= 0:
            raise ValueError(f"preset {self.name!r}: lesion_kl_weight must be positive")
        if self.lesion_reads not in ("features", "anatomy"):
            raise ValueError(f"preset {self.name!r}: lesion_reads must be 'features' or 'anatomy'")
        if self.lesion_scale and not self.lesion_support:
            raise ValueError(
                f"preset {self.name!r}: lesion_scale needs lesion_support (the offset lives on the support)"
            )
        if self.lesion_blend not in ("add", "composite"):
            raise ValueError(f"preset {self.name!r}: lesion_blend must be 'add' or 'composite'")
        if self.lesion_attenuates and (self.lesion_blend != "add" or not self.lesion_support):
            raise ValueError(f"preset {self.name!r}: lesion_attenuates needs lesion_support and lesion_blend 'add'")
        if self.lesion_blend == "composite" and self.lesion_blocks and not self.lesion_support:
            raise ValueError(f"preset {self.name!r}: lesion_blend 'composite' needs lesion_support")
        if self.cf_interventions not in ("marginal", "additions"):
            raise ValueError(f"preset {self.name!r}: cf_interventions must be 'marginal' or 'additions'")
        if self.cf_anchor_reference not in ("stage", "elbo"):
            raise ValueError(f"preset {self.name!r}: cf_anchor_reference must be 'stage' or 'elbo'")
        if not 0.0 <= self.cf_confidence < 1.0:
            raise ValueError(f"preset {self.name!r}: cf_confidence must lie in [0, 1)")
        if self.cf_confidence and self.cf_interventions != "additions":
            raise ValueError(f"preset {self.name!r}: cf_confidence caps the judge of additions ('additions' only)")
        if list(self.resolutions) != sorted(set(self.resolutions)):
            raise ValueError(f"preset {self.name!r}: resolutions must be strictly increasing")
        missing = set(self.latent_resolutions) - set(self.resolutions)
        if missing:
            raise ValueError(f"preset {self.name!r}: latent resolutions {sorted(missing)} are not network resolutions")

    def to_dict(self):
        data = asdict(self)
        for key in ("resolutions", "widths", "blocks", "latent_resolutions", "betas"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


PRESETS = {
    # Tiny: one optimisation step in well under a second on a CPU; used by the tests.
    "test-32": Preset(
        name="test-32",
        resolution=32,
        resolutions=(1, 4, 8, 16, 32),
        widths=(16, 16, 16, 8, 8),
        blocks=(1, 1, 1, 1, 1),
        latent_resolutions=(1, 4),
        z_channels=4,
        parent_embedding=8,
        lr=2e-3,
        weight_decay=0.0,
        warmup_steps=5,
        grad_clip=200.0,
        skip_threshold=1e6,
        ema_rate=0.9,
        batch_size=8,
        pad=2,
        predictor_width=8,
        cf_lr=1e-3,
        steps={"parents": 20, "predictors": 10, "hvae": 10, "counterfactual": 5},
        checkpoint_every=5,
        eval_batches=1,
    ),
    # The demo: trains on two CPU cores within about fifteen minutes. Latents only at 1, 4 and 8 px; the 16-64 px
    # path is deterministic and driven by the parents, which therefore have to draw the lesion. No blocks at 64 px:
    # the network folds 2x2 pixel patches into channels and runs at 32 px. The disease enters a rectified lesion
    # branch with its own 16-dim lesion code per disease; the anatomy adversary reads the trunk's pixel mean and scale;
    # in the ELBO stage a lesion critic asks additions drawn from the prior code to look like the lesions the branch
    # draws; counterfactual training judges additions only, with the branch's drawing of real lesions anchored; the
    # final model is chosen on validation counterfactuals.
    "cpu-64": Preset(
        name="cpu-64",
        resolution=64,
        resolutions=(1, 4, 8, 16, 32, 64),
        widths=(64, 64, 32, 32, 16, 16),
        blocks=(1, 2, 2, 1, 1, 0),
        latent_resolutions=(1, 4, 8),
        z_channels=8,
        parent_embedding=32,
        lesion_blocks=1,
        anatomy_weight=1.0,
        anatomy_reads_scale=True,
        lesion_latent=16,
        lesion_latent_map=2,
        lesion_support=True,
        lesion_free_bits=4.0,
        lesion_sparsity=1.0,
        elbo_lesion_critic_weight=0.3,
        cf_interventions="additions",
        cf_removal_anchor=100.0,
        select_final=True,
        lr=2e-3,
        weight_decay=0.01,
        warmup_steps=50,
        grad_clip=200.0,
        skip_threshold=3000.0,
        ema_rate=0.99,
        batch_size=16,
        pad=3,
        predictor_width=16,
        predictor_lr=2e-3,
        cf_lr=2e-4,
        effect_penalty=10.0,
        cf_branch_only=True,
        steps={"parents": 300, "predictors": 800, "hvae": 4000, "counterfactual": 1500},
        # where the plan spends its time (single-thread phantom runs: parents 0.3%, predictors 1.5-3%, ELBO 77-80%,
        # counterfactual 19-20%), so a capped run stops every stage at about the same share of its steps
        budget_shares={"parents": 0.02, "predictors": 0.04, "hvae": 0.74, "counterfactual": 0.2},
        checkpoint_every=100,
        eval_batches=4,
    ),
    # Appendix B of the paper: latents at 1..96 px, a final deterministic 192 px block, AdamW, EMA 0.999.
    "paper-192": Preset(
        name="paper-192",
        resolution=192,
        resolutions=(1, 6, 12, 24, 48, 96, 192),
        widths=(512, 192, 160, 128, 96, 64, 32),
        blocks=(2, 4, 8, 12, 8, 4, 1),
        latent_resolutions=(1, 6, 12, 24, 48, 96),
        z_channels=16,
        parent_embedding=64,
        bottleneck=True,
        lr=5e-5,
        betas=(0.9, 0.9),
        weight_decay=0.1,
        warmup_steps=100,
        grad_clip=350.0,
        skip_threshold=500.0,
        ema_rate=0.999,
        batch_size=32,
        pad=9,
        predictor_width=32,
        cf_lr=1e-5,
        steps={"parents": 5000, "predictors": 20000, "hvae": 375000, "counterfactual": 20000},
        checkpoint_every=2000,
        eval_batches=32,
    ),
}


class SnapshotMismatch(ValueError):
    """Training state written with one preset snapshot, offered for resuming a run whose snapshot differs."""


def require_same_snapshot(snapshot, stored, source):
    """Refuse to go on from `source` (a checkpoint or a run manifest) unless the snapshot it stored is `snapshot`.

    Both are `Preset.to_dict()` forms; `stored` is None where `source` holds no snapshot yet. A snapshot written before
    a field existed reads as that field's default. Weights, optimiser state and schedule resumed under other settings
    would silently train a model that neither snapshot describes.
    """
    if stored is None:
        return
    expected, found = Preset.from_dict(snapshot).to_dict(), Preset.from_dict(stored).to_dict()
    changed = [key for key in expected if expected[key] != found[key]]
    if changed:
        details = "; ".join(f"{key}: {found[key]!r} there, {expected[key]!r} in the run" for key in changed)
        raise SnapshotMismatch(f"{source} was written with another preset snapshot than the run's ({details})")


def get_preset(name):
    try:
        preset = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return Preset.from_dict(preset.to_dict())
