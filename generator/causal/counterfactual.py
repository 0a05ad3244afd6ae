"""Counterfactual inference with the full deep structural causal model: abduction, action, prediction.

1. Abduction: the parents' exogenous noise from the parent model, the image's latents from the HVAE posterior, and
   the pixel noise (the standardised residual of the likelihood).
2. Action: do() on any set of parents, propagated to their descendants by the parent model.
3. Prediction: decode the same latents and pixel noise under the counterfactual parents.

Everything on the image side is differentiable with respect to the HVAE parameters (counterfactual training and the
expert term back-propagate through it); the parent model acts on discrete values and is not.
"""

from dataclasses import dataclass

import torch
from torch import nn

from generator.causal.hvae import ConditionalHVAE
from generator.causal.parents import ParentModel


@dataclass
class Counterfactual:
    x_cf: torch.Tensor  # [N,1,H,W] in [-1, 1], mean over samples
    pa_cf: dict  # name -> Tensor[N], the data set's dtypes
    effect: torch.Tensor  # x_cf - x
    uncertainty: torch.Tensor  # per-pixel std over samples (zeros for one sample)


@dataclass
class Abducted:
    """Everything counterfactual prediction needs about one batch of factual images."""

    x: torch.Tensor
    pa: dict
    parent_noise: dict
    image_noise: list  # one hvae.Abduction per sample


class CounterfactualModel(nn.Module):
    def __init__(self, graph, preset, parent_model=None, hvae=None):
        super().__init__()
        self.graph = graph
        self.preset = preset
        self.resolution = preset.resolution
        self.parent_model = parent_model or ParentModel(graph)
        self.hvae = hvae or ConditionalHVAE(preset, graph)

    def abduct(self, x, pa, samples=1, generator=None):
        """With one sample the posterior means are used (a deterministic answer); with more, posterior draws.

        With a lesion latent (see generator.causal.hvae) the anatomy always takes the posterior means, and the draws
        differ in the lesion codes only: the seen lesion's code from its posterior, every other disease's code from
        the prior. An addition is then one sample of the counterfactual distribution per draw, reproducible from the
        generator's seed."""
        return Abducted(
            x=x,
            pa=pa,
            parent_noise=self.parent_model.abduct(pa, generator, self.parent_model.dependent_nodes()),
            image_noise=[self.hvae.abduct(x, pa, sample=samples > 1, generator=generator) for _ in range(samples)],
        )

    def intervene(self, abducted, do):
        return self.parent_model.intervene(abducted.parent_noise, do, observed=abducted.pa)

    def predict(self, abducted, pa_cf):
        draws = torch.stack([self.hvae.predict(noise, pa_cf) for noise in abducted.image_noise])
        # the mean change added to x (not the mean of the draws): a pixel no draw changes stays exactly as it was
        x_cf = abducted.x + (draws - abducted.x).mean(0)
        uncertainty = draws.std(0, unbiased=False) if draws.shape[0] > 1 else torch.zeros_like(x_cf)
        return Counterfactual(x_cf=x_cf, pa_cf=pa_cf, effect=x_cf - abducted.x, uncertainty=uncertainty)

    def counterfactual(self, x, pa, do, samples=1, generator=None):
        """x: [N,1,H,W] in [-1, 1]; pa: name -> Tensor[N]; do: name -> Tensor[N], scalar or category name."""
        unknown = set(do) - set(self.graph.names)
        if unknown:
            raise KeyError(f"cannot intervene on unknown parents {sorted(unknown)}; graph has {list(self.graph.names)}")
        abducted = self.abduct(x, pa, samples, generator)
        return self.predict(abducted, self.intervene(abducted, do))

    def reconstruct(self, x, pa):
        """Counterfactual under the observed parents (composition); equals x up to clamping."""
        return self.predict(self.abduct(x, pa), pa).x_cf
