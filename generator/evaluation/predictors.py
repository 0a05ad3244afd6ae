"""Independent evaluation predictors: the oracle Pa(x) that effectiveness is measured with.

A counterfactual can fool the classifier it was trained against (a bright spot that classifier happens to read as
pneumonia) without showing the disease. Effectiveness is therefore judged by predictors that the generator never
saw: trained on REAL images only, with their own seed, and with an architecture unlike the training predictors
(generator/causal/predictors.py: plain strided convolutions with GELU) and the xrv DenseNet expert. Here:
a small residual network with BatchNorm/ReLU, average+max pooling, and one linear head per parent (classes for
binary/categorical parents, the value scaled to [-1, 1] for continuous ones).
"""

import copy
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from generator.data.graph import CONTINUOUS, CausalGraph
from generator.evaluation.metrics import macro_auroc

ARCHITECTURE = "evaluation-resnet-bn-v1"
DEFAULT_SEED = 7919  # deliberately not a seed the generator's own runs use by default


class ResidualBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
        )

    def forward(self, x):
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(h)) + self.shortcut(x))


def _stage_count(resolution):
    """Halve the resolution until about 4 px remain (at least one stage)."""
    return max(1, int(math.log2(max(resolution, 8) / 4)))


class EvaluationPredictors(nn.Module):
    architecture = ARCHITECTURE

    def __init__(self, graph, resolution, width=16, seed=DEFAULT_SEED):
        super().__init__()
        self.graph = graph
        self.resolution = int(resolution)
        self.width = int(width)
        self.seed = int(seed)
        self.validation = {}
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, channels = [], width
        for stage in range(_stage_count(self.resolution)):
            out = width * min(2**stage, 8)
            blocks.append(ResidualBlock(channels, out, stride=2))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.feature_width = 2 * channels
        self.heads = nn.ModuleDict(
            {
                node.name: nn.Linear(self.feature_width, 1 if node.kind == CONTINUOUS else node.cardinality)
                for node in graph.nodes
            }
        )

    def features(self, x):
        """Pooled penultimate features [N, F] (average and max pooling side by side)."""
        h = self.blocks(self.stem(x))
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)

    def forward(self, x):
        features = self.features(x)
        return {name: head(features) for name, head in self.heads.items()}

    def loss(self, x, pa):
        outputs = self(x)
        total = 0.0
        for node in self.graph.nodes:
            out = outputs[node.name]
            if node.kind == CONTINUOUS:
                total = total + F.smooth_l1_loss(out[:, 0], scale(node, pa[node.name]), beta=0.1)
            else:
                total = total + F.cross_entropy(out, pa[node.name].long())
        return total

    @torch.no_grad()
    def predict(self, x, batch_size=256):
        """Dict name -> class probabilities [N, K] (binary: K = 2) or the predicted value [N] in raw units."""
        self.eval()
        device = next(self.parameters()).device
        chunks = [self(x[i : i + batch_size].to(device)) for i in range(0, x.shape[0], batch_size)]
        result = {}
        for node in self.graph.nodes:
            out = torch.cat([c[node.name] for c in chunks]).cpu()
            result[node.name] = unscale(node, out[:, 0]) if node.kind == CONTINUOUS else F.softmax(out, dim=-1)
        return result

    def save(self, path):
        torch.save(
            {
                "architecture": ARCHITECTURE,
                "graph": self.graph.to_dict(),
                "resolution": self.resolution,
                "width": self.width,
                "seed": self.seed,
                "validation": self.validation,
                "state_dict": self.state_dict(),
            },
            path,
        )
        return path

    @classmethod
    def load(cls, path, map_location="cpu"):
        saved = torch.load(path, map_location=map_location, weights_only=False)
        if not isinstance(saved, dict) or saved.get("architecture") != ARCHITECTURE:
            raise ValueError(f"{path!r} is not a file saved by EvaluationPredictors.save ({ARCHITECTURE})")
        model = cls(CausalGraph.from_dict(saved["graph"]), saved["resolution"], saved["width"], saved["seed"])
        model.load_state_dict(saved["state_dict"])
        model.validation = saved["validation"]
        return model.eval()


def scale(node, value):
    return 2 * (value.float() - node.low) / (node.high - node.low) - 1


def unscale(node, scaled):
    return (scaled + 1) / 2 * (node.high - node.low) + node.low


def score_predictions(graph, predictions, targets):
    """Per-parent figures of predictions against target values: accuracy and macro AUROC, or MAE (raw units)."""
    scores = {}
    for node in graph.nodes:
        predicted, target = predictions[node.name], targets[node.name]
        if node.kind == CONTINUOUS:
            scores[node.name] = {"mae": float((predicted - target.float()).abs().mean())}
        else:
            labels = target.long().numpy()
            probs = predicted.numpy()
            scores[node.name] = {
                "accuracy": float(np.mean(probs.argmax(axis=1) == labels)),
                "auroc": _none_if_nan(macro_auroc(labels, probs)),
            }
    return scores


def _none_if_nan(value):
    return None if value is None or np.isnan(value) else float(value)


def train_eval_predictors(
    train_set, valid_set, seed=DEFAULT_SEED, progress=None, epochs=8, batch_size=64, lr=2e-3, width=16, device=None
):
    """Train evaluation predictors on a data set of REAL images and keep the epoch with the best validation loss.

    `train_set`/`valid_set` carry `.graph`, `.x` [N,1,H,W] in [-1, 1] and `.pa`. Never pass a set that contains
    counterfactuals (active-learning additions): the oracle must know only real images. `progress(fraction,
    message)` is called after every epoch. The validation figures are kept in `.validation`.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    graph = train_set.graph
    model = EvaluationPredictors(graph, train_set.x.shape[-1], width=width, seed=seed).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    n = train_set.x.shape[0]
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=epochs * steps_per_epoch)
    best_loss, best_state = float("inf"), None
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * batch_size : (step + 1) * batch_size]
            if len(batch) < 2:  # BatchNorm needs two examples
                continue
            pa = {name: value[batch].to(device) for name, value in train_set.pa.items() if name in graph}
            loss = model.loss(train_set.x[batch].to(device), pa)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
        valid_loss = _validation_loss(model, valid_set, batch_size, device)
        if valid_loss < best_loss:
            best_loss, best_state = valid_loss, copy.deepcopy(model.state_dict())
        if progress is not None:
            progress(
                (epoch + 1) / epochs, f"evaluation predictors epoch {epoch + 1}/{epochs} valid loss {valid_loss:.3f}"
            )
    model.load_state_dict(best_state)
    model.eval()
    model.validation = score_predictions(graph, model.predict(valid_set.x), valid_set.pa)
    model.validation["loss"] = best_loss
    return model


@torch.no_grad()
def _validation_loss(model, dataset, batch_size, device):
    model.eval()
    total, count = 0.0, 0
    for start in range(0, dataset.x.shape[0], batch_size):
        x = dataset.x[start : start + batch_size].to(device)
        pa = {name: value[start : start + batch_size].to(device) for name, value in dataset.pa.items()}
        total += float(model.loss(x, pa)) * x.shape[0]
        count += x.shape[0]
    return total / max(count, 1)
