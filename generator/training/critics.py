"""The networks only training needs: adversaries and critics that read what the image model produces and push it,
through their losses, towards what the causal model requires. None of them is part of a trained model; checkpoints
keep their weights so that training can go on from them (a resumed stage, the active-learning rounds).
"""

import torch
from torch import nn
from torch.nn import functional as F

from generator.data.graph import CONTINUOUS


class LatentAdversary(nn.Module):
    """Predicts the discrete parents from abducted latents; the encoder is trained to make it fail.

    In a structural causal model the exogenous noise is independent of the parents. If the latents could tell the
    disease, the decoder would draw the lesion from them and ignore the label, and a counterfactual would not change.
    """

    def __init__(self, preset, graph, hidden=128, pooled=8):
        super().__init__()
        self.graph = graph
        self.pooled = pooled
        self.targets = [n.name for n in graph.nodes if n.kind != CONTINUOUS]
        blocks = dict(zip(preset.resolutions, preset.blocks))
        features = sum(
            blocks[r] * preset.z_channels * min(r, pooled) ** 2
            for r in preset.resolutions
            if r in preset.latent_resolutions
        )
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, graph[name].cardinality) for name in self.targets})

    def forward(self, latents):
        flat = [F.adaptive_avg_pool2d(z, min(z.shape[-1], self.pooled)).flatten(1) for z in latents]
        h = self.net(torch.cat(flat, dim=1))
        return {name: head(h) for name, head in self.heads.items()}

    def loss(self, latents, pa):
        """Cross-entropy of the adversary (what it minimises)."""
        logits = self(latents)
        return sum(F.cross_entropy(logits[n], pa[n].long()) for n in self.targets)

    def confusion(self, latents, pa):
        """What the encoder minimises: cross-entropy of the adversary against the batch's class frequencies, minus
        its entropy, so it is zero when the latents tell nothing about the parents."""
        logits = self(latents)
        return sum(marginal_confusion(logits[n], pa[n], self.graph[n].cardinality) for n in self.targets)


def marginal_confusion(logits, labels, cardinality):
    """Cross-entropy of an adversary's predictions against the batch's class frequencies, minus their entropy: zero
    when the adversary can do no better than guess the marginal, positive when its input gives the class away."""
    marginal = F.one_hot(labels.long(), cardinality).float().mean(0)
    cross = -(F.log_softmax(logits, dim=-1) * marginal).sum(-1).mean()
    entropy = -(marginal * torch.log(marginal.clamp(min=1e-12))).sum()
    return cross - entropy


class AnatomyAdversary(nn.Module):
    """Reads the disease from the trunk's image (the pixel mean without the lesion branch); the trunk is trained to
    make it fail.

    With a lesion branch the likelihood alone does not say which part draws a lesion: the latents can carry it and the
    trunk draw it, leaving the branch silent, so do(disease := healthy) would change nothing. In the causal graph the
    anatomy does not depend on the disease, so the trunk's image must not tell the disease either; the only place
    left to draw a lesion is then the branch, and removing it (x - branch) removes the lesion.
    """

    def __init__(self, preset, graph, width=16):
        super().__init__()
        self.node = preset.lesion_node
        self.cardinality = graph[self.node].cardinality
        self.reads_scale = bool(preset.anatomy_reads_scale)
        layers, channels = [], 2 if self.reads_scale else 1
        for multiplier in (1, 2, 4):
            layers += [nn.Conv2d(channels, width * multiplier, 3, stride=2, padding=1), nn.GELU()]
            channels = width * multiplier
        self.net = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(channels, self.cardinality))

    def trunk_image(self, out):
        """What the adversary reads of an ELBO output: the trunk's pixel mean, and its log-sigma when the preset says
        `anatomy_reads_scale`."""
        if self.reads_scale:
            return torch.cat([out["anatomy"], out["anatomy_log_sigma"]], dim=1)
        return out["anatomy"]

    def forward(self, anatomy):
        return self.net(anatomy)

    def loss(self, anatomy, pa):
        """Cross-entropy of the adversary (what it minimises)."""
        return F.cross_entropy(self(anatomy), pa[self.node].long())

    def confusion(self, anatomy, pa):
        """What the trunk minimises: zero when its image tells nothing about the disease."""
        return marginal_confusion(self(anatomy), pa[self.node], self.cardinality)


class LesionCritic(nn.Module):
    """Tells the lesion maps the branch draws for real diseased images from those it adds under an intervention.

    On a real diseased image the ELBO pins the branch's map to the lesion that is there, so these maps show what
    lesions look like (their sides, sizes, textures). What the branch adds to an image under do(disease) is seen by
    nothing but the predictors, and against them alone it drifts to whatever convinces them: the same bright mark on
    every image. Penalising added maps this critic can tell from real ones keeps additions lesion-like.
    """

    def __init__(self, preset, graph, width=16):
        super().__init__()
        self.node = preset.lesion_node
        self.cardinality = graph[self.node].cardinality
        layers, channels = [], self.cardinality  # the map and one plane per disease class (category 0 unused)
        for multiplier in (1, 2, 4):
            layers += [nn.Conv2d(channels, width * multiplier, 3, stride=2, padding=1), nn.GELU()]
            channels = width * multiplier
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 1))

    def forward(self, lesion, disease):
        planes = F.one_hot(disease.long(), self.cardinality)[:, 1:].to(lesion.dtype)[:, :, None, None]
        return self.net(torch.cat([lesion, planes.expand(-1, -1, *lesion.shape[-2:])], dim=1)).squeeze(1)

    def loss(self, real, real_disease, added, added_disease):
        """Logistic loss of the critic: real maps 1, added maps 0."""
        return F.binary_cross_entropy_with_logits(
            self(real, real_disease), torch.ones(len(real), device=real.device)
        ) + F.binary_cross_entropy_with_logits(self(added, added_disease), torch.zeros(len(added), device=real.device))

    def realism(self, added, added_disease):
        """What the branch minimises on added maps (non-saturating): -log D(added)."""
        logits = self(added, added_disease)
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
