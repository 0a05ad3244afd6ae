"""Counterfactual training (Eq. 9 of the paper): make interventions visible to the parent predictors while the
observational free energy stays at the pretrained model's level.

    L = L_CT + lambda * (F_FE - c),   lambda >= 0 learned by gradient ascent, with damping

- L_CT (Eq. 8): a random parent k per batch gets a value drawn from its marginal (a permutation of the batch's own
  values, i.e. the empirical marginal); the counterfactual is made with the model's own abduction-action-prediction
  and the frozen anti-causal predictors score the intervened parent and every descendant that changed with it.
  With the preset's `cf_interventions="additions"` only healthy images are intervened on (a disease drawn for each)
  and only those additions are scored; `cf_removal_anchor` holds the branch's drawing of real lesions.
- c: the free energy of the pretrained model on the validation split (measured, plus a small relative slack).
- the latent adversary keeps working, so the latents stay independent of the parents during this stage as well.
- `extra_loss(model, x, pa, cf, do)` is added to the objective (the expert constraint of the proposed model).
"""

import copy
import math

import torch

from generator.causal.counterfactual import Counterfactual
from generator.training.critics import AnatomyAdversary, LatentAdversary, LesionCritic
from generator.training.trainer import (
    EMA,
    BatchSampler,
    StageTask,
    augment,
    choose_device,
    clipped_step,
    run_stage,
    take,
)


@torch.no_grad()
def measure_free_energy(hvae, dataset, preset, device, batches=None, seed=0):
    """Mean negative ELBO (nats per pixel) over the first batches of a data set, with fixed latent noise."""
    batches = batches or preset.eval_batches
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = hvae.training
    hvae.eval()
    total, count = 0.0, 0
    for b in range(batches):
        start = b * preset.batch_size
        if start >= len(dataset.x):  # a validation set smaller than `batches` batches
            break
        index = torch.arange(start, min(start + preset.batch_size, len(dataset.x)))
        x, pa = take(dataset, index, device)
        total += hvae.elbo(x, pa, generator=generator)["free_energy"].sum().item()
        count += len(index)
    hvae.train(was_training)
    return total / max(count, 1)


class OptionalCritic:
    """A critic network with its optimiser, trained one step at a time beside the generator, or nothing at all when
    the preset switches it off. Subclasses build `self.net` and say how it scores a batch."""

    key = "critic"  # name of the network in the state dict

    def __init__(self, active, build, preset, device):
        self.active = bool(active)
        self.net = build().to(device) if self.active else None
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=preset.adversary_lr) if self.active else None

    def fit(self, loss_fn):
        """One optimiser step of the critic on `loss_fn()`; returns the loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def state_dict(self):
        if not self.active:
            return {}
        return {self.key: self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        if self.active and state:
            self.net.load_state_dict(state[self.key])
            self.optimizer.load_state_dict(state["optimizer"])


class AnatomyCritic(OptionalCritic):
    """The anatomy adversary, or nothing when the preset has no lesion branch or a zero weight.

    `confusion` is the term the generator minimises (with gradient into the trunk); `train_step` then fits the
    adversary one step on the detached trunk images.
    """

    key = "adversary"

    def __init__(self, preset, graph, device):
        active = preset.lesion_blocks and preset.anatomy_weight > 0
        super().__init__(active, lambda: AnatomyAdversary(preset, graph), preset, device)

    def confusion(self, out, pa):
        """`out`: the HVAE's ELBO output for the batch."""
        if not self.active:
            return torch.zeros((), device=out["anatomy"].device)
        return self.net.confusion(self.net.trunk_image(out), pa)

    def train_step(self, out, pa):
        if not self.active:
            return 0.0
        return self.fit(lambda: self.net.loss(self.net.trunk_image(out).detach(), pa))


class AddedLesionCritic(OptionalCritic):
    """The lesion critic, or nothing when the preset has no lesion branch or a zero weight.

    A batch's real maps are the branch's drawings on its diseased images; its added maps are what the branch draws
    where the intervention gives an image a disease it did not have.
    """

    def __init__(self, preset, graph, device, weight=None):
        self.node = preset.lesion_node
        weight = preset.lesion_critic_weight if weight is None else weight
        active = preset.lesion_blocks and weight > 0
        super().__init__(active, lambda: LesionCritic(preset, graph), preset, device)

    def split(self, pa, pa_cf):
        """Masks of the samples with a real lesion and of those the intervention adds one to."""
        real = pa[self.node] != 0
        added = (pa_cf[self.node] != pa[self.node]) & (pa_cf[self.node] != 0)
        return real, added

    def realism(self, lesion, pa, lesion_cf, pa_cf):
        if not self.active:  # no branch at all: there are no maps
            return torch.zeros(())
        real, added = self.split(pa, pa_cf)
        if not added.any() or not real.any():
            return torch.zeros((), device=lesion.device)
        return self.net.realism(lesion_cf[added], pa_cf[self.node][added])

    def train_step(self, lesion, pa, lesion_cf, pa_cf):
        if not self.active:
            return 0.0
        real, added = self.split(pa, pa_cf)
        if not added.any() or not real.any():
            return 0.0
        return self.fit(
            lambda: self.net.loss(
                lesion[real].detach(), pa[self.node][real], lesion_cf[added].detach(), pa_cf[self.node][added]
            )
        )


LESION_POSTERIOR_HEADS = ("lesion_posterior.", "lesion_map_posterior.")


def branch_parameters(hvae, posterior=True):
    """The lesion branch's parameters: what counterfactual training changes when the preset says `cf_branch_only`.
    Without `posterior`, the heads of q(z_L | x) are left out: the codes the image's lesions are abducted to stay put.

    After the ELBO stage the trunk draws a lesion-free anatomy (the anatomy adversary) and the branch draws the
    lesion, so a removal is already right. Were the trunk trained further against the predictors, it could team up
    with the branch, e.g. darken the anatomy where the branch brightens, and turn removals into dark holes and
    additions into bright marks a classifier accepts. With the trunk, encoder and latents fixed, the ELBO constraint
    pins the branch's drawing on every diseased image, and the only freedom left is what it adds to a healthy one.
    """
    return [
        p
        for name, p in hvae.named_parameters()
        if name.startswith("lesion_") and (posterior or not name.startswith(LESION_POSTERIOR_HEADS))
    ]


def random_intervention(pa, targets):
    """do(pa_k := value drawn from the empirical marginal of pa_k) for one random parent k of `targets`."""
    name = targets[int(torch.randint(len(targets), ()))]
    permutation = torch.randperm(pa[name].shape[0])
    return {name: pa[name][permutation.to(pa[name].device)]}


def addition_intervention(pa, node, cardinality):
    """do(node := a class drawn uniformly from 1..cardinality-1) for every image in class 0; the others keep theirs."""
    values = pa[node]
    drawn = torch.randint(1, cardinality, values.shape, device=values.device, dtype=values.dtype)
    return {node: torch.where(values == 0, drawn, values)}


class CounterfactualTask(StageTask):
    name = "counterfactual"

    def __init__(
        self,
        model,
        predictors,
        preset,
        train_set,
        constraint,
        seed,
        device,
        adversary=None,
        extra_loss=None,
        targets=None,
        anatomy=None,
        anchor_reference=None,
    ):
        self.model = model
        self.hvae = model.hvae
        self.graph = model.graph
        self.predictors = predictors.eval()
        for p in list(predictors.parameters()) + list(model.parent_model.parameters()):
            p.requires_grad_(False)
        self.preset = preset
        self.train_set = train_set
        self.constraint = float(constraint)
        self.device = device
        self.extra_loss = extra_loss
        self.targets = list(targets or self.graph.names)
        # with a lesion branch and `cf_branch_only`, the stage trains the branch alone (see branch_parameters)
        self.branch_only = bool(preset.lesion_blocks and preset.cf_branch_only)
        if self.branch_only:
            self.targets = [preset.lesion_node]
        # "additions": only healthy images are intervened on, and the lesion posterior stays fixed (see the preset)
        self.additions_only = preset.cf_interventions == "additions"
        if self.additions_only and not self.branch_only:
            raise ValueError("cf_interventions='additions' needs a lesion branch trained alone (cf_branch_only)")
        if self.branch_only:
            self.trained = branch_parameters(self.hvae, posterior=not self.additions_only)
        else:
            self.trained = list(self.hvae.parameters())
        trained = {id(p) for p in self.trained}
        for p in self.hvae.parameters():
            p.requires_grad_(id(p) in trained)
        self.adversary = adversary or LatentAdversary(preset, self.graph).to(device)
        self.optimizer = torch.optim.AdamW(
            self.trained, lr=preset.cf_lr, betas=preset.betas, weight_decay=preset.weight_decay
        )
        self.adversary_optimizer = torch.optim.Adam(self.adversary.parameters(), lr=preset.adversary_lr)
        self.anatomy = anatomy or AnatomyCritic(preset, self.graph, device)
        self.lesion_critic = AddedLesionCritic(preset, self.graph, device)
        self.ema = EMA(self.hvae, preset.ema_rate)
        # the removal anchor's reference: `anchor_reference` when given (an HVAE, e.g. the run's ELBO-stage model),
        # otherwise the model as the stage found it (before any resumed state is loaded)
        self.reference = None
        if preset.lesion_blocks and preset.cf_removal_anchor > 0:
            reference = self.hvae if anchor_reference is None else anchor_reference
            self.reference = copy.deepcopy(reference).to(device).eval().requires_grad_(False)
        self.sampler = BatchSampler(len(train_set.x), preset.batch_size, seed)
        self.lagrange = torch.tensor(float(preset.lagrange_init))

    def step(self, step):
        preset = self.preset
        x, pa = take(self.train_set, self.sampler.next(), self.device)
        x = augment(x, preset)
        out = self.hvae.elbo(x, pa)
        free_energy = out["free_energy"].mean()

        # the counterfactual is made from the same posterior draw of the latents the ELBO term scores: from the
        # posterior means instead, the branch could tell the two inputs apart (means vary less than draws) and draw
        # one thing where the likelihood looks and another where only the predictors do
        node = preset.lesion_node
        if self.additions_only:
            do = addition_intervention(pa, node, self.graph[node].cardinality)
        else:
            do = random_intervention(pa, self.targets)
        pa_cf = self.model.parent_model.counterfactual(pa, do)
        x_cf, lesion_cf = self.hvae.predict(out["abduction"], pa_cf, with_lesion=True)
        cf = Counterfactual(x_cf=x_cf, pa_cf=pa_cf, effect=x_cf - x, uncertainty=torch.zeros_like(x_cf))
        if self.additions_only:
            # the predictors judge the added lesions only; an image left as it was carries no counterfactual signal
            added = (pa_cf[node] != pa[node]).to(x.dtype)
            nll = -self.predictors.log_prob(cf.x_cf, cf.pa_cf, [node])[node]
            if preset.cf_confidence:
                # zero once the judge gives the added disease at least `cf_confidence`
                nll = (nll + math.log(preset.cf_confidence)).clamp(min=0.0)
            counterfactual_loss = (nll * added).sum() / added.sum().clamp(min=1.0)
        else:
            changed = [n for n in self.graph.names if n in do or not torch.equal(cf.pa_cf[n], pa[n])]
            counterfactual_loss = -sum(v.mean() for v in self.predictors.log_prob(cf.x_cf, cf.pa_cf, changed).values())
        anchor = self.removal_anchor(out, pa)

        gap = free_energy - self.constraint
        multiplier = (self.lagrange + preset.lagrange_damping * gap.detach()).clamp(min=0.0)
        confusion = self.adversary.confusion(out["latents"], pa)
        anatomy_confusion = self.anatomy.confusion(out, pa)
        realism = self.lesion_critic.realism(out["lesion"], pa, lesion_cf, pa_cf)
        effect_size = cf.effect.abs().mean()
        loss = (
            counterfactual_loss
            + multiplier * gap
            + preset.independence_weight * confusion
            + preset.anatomy_weight * anatomy_confusion
            + preset.effect_penalty * effect_size
            + preset.lesion_critic_weight * realism
            + preset.cf_removal_anchor * anchor
        )
        extra = torch.zeros(())
        if self.extra_loss is not None:
            extra = self.extra_loss(self.model, x, pa, cf, do)
            loss = loss + extra
        loss.backward()
        norm, applied = clipped_step(self.optimizer, self.trained, preset, step, preset.cf_lr)

        self.adversary.zero_grad(set_to_none=True)
        adversary_loss = self.adversary.loss([z.detach() for z in out["latents"]], pa)
        adversary_loss.backward()
        self.adversary_optimizer.step()
        self.adversary_optimizer.zero_grad(set_to_none=True)
        self.anatomy.train_step(out, pa)
        critic_loss = self.lesion_critic.train_step(out["lesion"], pa, lesion_cf, pa_cf)

        self.lagrange = (self.lagrange + preset.lagrange_lr * gap.detach().cpu()).clamp(min=0.0)
        if applied:
            self.ema.update(self.hvae)
        return {
            "loss": loss.item(),
            "free_energy": free_energy.item(),
            "counterfactual_loss": counterfactual_loss.item(),
            "lagrange": float(self.lagrange),
            "extra": float(extra.detach()),
            "confusion": confusion.item(),
            "anatomy_confusion": anatomy_confusion.item(),
            "lesion_realism": realism.item(),
            "lesion_critic": critic_loss,
            "effect": effect_size.item(),
            "removal_anchor": anchor.item(),
            "grad_norm": norm,
        }

    def removal_anchor(self, out, pa):
        """Mean |map - reference map| over the batch's diseased images, both drawn from the same abducted codes and
        trunk output: how far the branch has moved from drawing the lesions the ELBO stage fitted (0 when off)."""
        if self.reference is None or not (diseased := pa[self.preset.lesion_node] != 0).any():
            return torch.zeros((), device=out["free_energy"].device)
        abduction = out["abduction"]
        with torch.no_grad():
            reference = self.reference.lesion(abduction.features, pa, abduction.lesion_latents, abduction.anatomy)
        return (out["lesion"] - reference).abs()[diseased].mean()

    def state_dict(self):
        return {
            "hvae": self.hvae.state_dict(),
            "hvae_ema": self.ema.module.state_dict(),
            "adversary": self.adversary.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "adversary_optimizer": self.adversary_optimizer.state_dict(),
            "anatomy": self.anatomy.state_dict(),
            "lesion_critic": self.lesion_critic.state_dict(),
            "sampler": self.sampler.state_dict(),
            "lagrange": self.lagrange,
            "constraint": self.constraint,
        }

    def load_state_dict(self, state):
        self.hvae.load_state_dict(state["hvae"])
        self.ema.module.load_state_dict(state["hvae_ema"])
        self.adversary.load_state_dict(state["adversary"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.adversary_optimizer.load_state_dict(state["adversary_optimizer"])
        self.anatomy.load_state_dict(state.get("anatomy", {}))
        self.lesion_critic.load_state_dict(state.get("lesion_critic", {}))
        self.sampler.load_state_dict(state["sampler"])
        self.lagrange = state["lagrange"]
        self.constraint = state["constraint"]


def finetune_counterfactual(
    model,
    data,
    steps,
    predictors,
    extra_loss=None,
    progress=None,
    constraint=None,
    preset=None,
    seed=0,
    time_budget=None,
    adversary=None,
    targets=None,
    anchor_reference=None,
):
    """Counterfactual training of an existing model on a (possibly augmented) training set, in memory.

    `data` is a splits dict (uses "train", and "valid" to measure the constraint) or a single data set. The model's
    HVAE ends up holding the EMA weights of the fine-tuning. `anchor_reference` (an HVAE) is what the removal anchor
    holds the branch to; by default the model as the fine-tuning finds it. Returns the final metrics and the loss
    history.
    """
    preset = preset or model.preset
    device = device_of(model)
    train_set = data["train"] if isinstance(data, dict) else data
    reference = data.get("valid", train_set) if isinstance(data, dict) else train_set
    if constraint is None:
        constraint = measure_free_energy(model.hvae, reference, preset, device) * (1 + preset.constraint_slack)
    predictors = predictors.to(device)
    task = CounterfactualTask(
        model,
        predictors,
        preset,
        train_set,
        constraint,
        seed,
        device,
        adversary,
        extra_loss,
        targets,
        anchor_reference=anchor_reference,
    )
    metrics, history, done = run_stage(task, steps, progress=progress, time_budget=time_budget)
    model.hvae.load_state_dict(task.ema.module.state_dict())
    for p in model.hvae.parameters():
        p.requires_grad_(True)
    return {
        "steps": done,
        "constraint": constraint,
        "lagrange": float(task.lagrange),
        "history": history,
        "valid_free_energy": measure_free_energy(model.hvae, reference, preset, device),
        **metrics,
    }


def device_of(module):
    for p in module.parameters():
        return p.device
    return choose_device()
