"""Anti-causal parent predictors q_psi(pa_k | x): one head per parent on a shared convolutional trunk.

Discrete parents get classification heads; continuous parents a Gaussian head on the value scaled to [-1, 1]. They
are trained on real images and then read counterfactuals, both to train the generator (Eq. 8 of the paper) and to
measure effectiveness.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from generator.data.graph import CONTINUOUS


def scale_continuous(node, value):
    return 2 * (value.float() - node.low) / (node.high - node.low) - 1


def unscale_continuous(node, scaled):
    return (scaled + 1) / 2 * (node.high - node.low) + node.low


class ParentPredictors(nn.Module):
    def __init__(self, graph, resolution, width=16):
        super().__init__()
        self.graph = graph
        layers, channels = [], 1
        size = resolution
        for multiplier in (1, 2, 4, 4):
            out = width * multiplier
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.GELU()]
            layers += [nn.Conv2d(out, out, 3, padding=1), nn.BatchNorm2d(out), nn.GELU()]
            channels, size = out, (size + 1) // 2
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict(
            {
                node.name: nn.Sequential(
                    nn.Linear(channels, channels),
                    nn.GELU(),
                    nn.Linear(channels, 2 if node.kind == CONTINUOUS else node.cardinality),
                )
                for node in graph.nodes
            }
        )

    def forward(self, x):
        features = self.trunk(x)
        return {name: head(features) for name, head in self.heads.items()}

    def log_prob(self, x, pa, names=None):
        """log q(pa_k | x) per sample for each requested parent, dict name -> [N]."""
        outputs = self(x)
        result = {}
        for name in names or self.graph.names:
            node = self.graph[name]
            out = outputs[name]
            if node.kind == CONTINUOUS:
                mean, log_std = out[:, 0], out[:, 1].clamp(-5, 2)
                target = scale_continuous(node, pa[name])
                result[name] = -0.5 * ((target - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
            else:
                result[name] = -F.cross_entropy(out, pa[name].long(), reduction="none")
        return result

    def loss(self, x, pa, names=None):
        return -sum(v.mean() for v in self.log_prob(x, pa, names).values())

    @torch.no_grad()
    def predict(self, x):
        """Class probabilities for discrete parents, the predicted value (raw units) for continuous ones."""
        outputs = self(x)
        result = {}
        for node in self.graph.nodes:
            out = outputs[node.name]
            if node.kind == CONTINUOUS:
                result[node.name] = unscale_continuous(node, out[:, 0])
            else:
                result[node.name] = F.softmax(out, dim=-1)
        return result
