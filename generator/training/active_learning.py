"""Active learning by forgetting events (Algorithm 1 of the paper; Toneva et al. 2019, Coleman et al. 2020).

A small proxy classifier is trained for a few epochs on the generator's current training set together with
candidate counterfactuals. Each time an example is presented, whether the proxy gets it right (before the update)
is recorded; an example "forgets" when it was right at its previous presentation and is wrong now. Candidates
the proxy keeps forgetting sit on its decision boundaries: those are the informative ones, and the top N join the
generator's training set with the labels they were generated under (Selection via Proxy).
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NEVER_LEARNED = np.inf


def forgetting_counts(correct_history):
    """Forgetting events per example, exactly as Algorithm 1, from a [T, N] history of correct (1) / wrong (0).

    Row t is the t-th presentation of every example. Accuracy starts at 0 for all examples, so the first
    presentation can only be a learning event. An example never classified correctly at any presentation gets
    `NEVER_LEARNED` (+inf): Toneva et al. rank such examples as the most forgettable of all, and +inf sorts them
    first in `select_top` while keeping the finite counts exact.
    """
    history = np.asarray(correct_history)
    if history.ndim != 2:
        raise ValueError(f"correct_history must be [T, N], got shape {history.shape}")
    history = history.astype(bool)
    previous = np.zeros(history.shape[1], dtype=bool)
    forget = np.zeros(history.shape[1], dtype=np.float64)
    for current in history:
        forget += previous & ~current
        previous = current
    forget[~history.any(axis=0)] = NEVER_LEARNED
    return forget


def forgetting_histogram(counts):
    """The distribution of forgetting counts as in Fig. 4a: percentage of examples per count, never-learned apart.

    Returns {"counts": [0, 1, ..., max], "percent": [...], "never_learned_percent": float, "n": N}.
    """
    counts = np.asarray(counts, dtype=np.float64)
    finite = counts[np.isfinite(counts)].astype(np.int64)
    n = len(counts)
    if n == 0:
        return {"counts": [], "percent": [], "never_learned_percent": 0.0, "n": 0}
    frequency = np.bincount(finite, minlength=1) if len(finite) else np.zeros(1, dtype=np.int64)
    return {
        "counts": list(range(len(frequency))),
        "percent": [100.0 * f / n for f in frequency.tolist()],
        "never_learned_percent": 100.0 * (n - len(finite)) / n,
        "n": n,
    }


def select_top(scores, n):
    """Indices of the n highest scores, highest first; ties keep their original order (deterministic)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not 0 <= n <= len(scores):
        raise ValueError(f"cannot select {n} of {len(scores)} candidates")
    return np.argsort(-scores, kind="stable")[:n]


class ProxyClassifier(nn.Module):
    """A cheap disease classifier (three strided convolutions) standing in for the target model."""

    def __init__(self, num_classes=3, width=16):
        super().__init__()
        layers = []
        channels = 1
        for out_channels in (width, 2 * width, 4 * width):
            layers += [
                nn.Conv2d(channels, out_channels, 3, stride=2, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            ]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def track_forgetting(
    train_x, train_y, epochs=8, batch_size=64, seed=0, progress=None, lr=1e-3, num_classes=3, device=None
):
    """Train a fresh proxy on (train_x, train_y) and record every example's correctness at every presentation.

    Each epoch presents every example once, in a random order; an example's correctness is read from the
    forward pass of its mini-batch, before that batch's gradient update (Algorithm 1). The proxy runs on
    `device` (default: where train_x is). Returns (forgetting counts [N], correctness history [epochs, N] bool).
    """
    if device is not None:
        train_x = train_x.to(device)
    train_y = torch.as_tensor(train_y).long()
    n = train_x.shape[0]
    if n != len(train_y):
        raise ValueError(f"{n} images but {len(train_y)} labels")
    torch.manual_seed(seed)
    order_generator = torch.Generator().manual_seed(seed)
    proxy = ProxyClassifier(num_classes=num_classes).to(train_x.device)
    optimiser = torch.optim.Adam(proxy.parameters(), lr=lr)
    history = np.zeros((epochs, n), dtype=bool)
    proxy.train()
    for epoch in range(epochs):
        for batch in torch.randperm(n, generator=order_generator).split(batch_size):
            logits = proxy(train_x[batch])
            labels = train_y[batch].to(logits.device)
            history[epoch, batch.numpy()] = (logits.argmax(dim=1) == labels).cpu().numpy()
            loss = F.cross_entropy(logits, labels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        if progress is not None:
            progress("proxy", (epoch + 1) / epochs, f"epoch {epoch + 1}/{epochs} accuracy {history[epoch].mean():.3f}")
    return forgetting_counts(history), history


def score_candidates(
    train_x, train_y, candidate_x, candidate_y, epochs=8, batch_size=64, seed=0, progress=None, device=None
):
    """Forgetting counts of candidates, from a proxy trained on the training set and the candidates together.

    Returns (candidate counts [M], training-set counts [N]).
    """
    pool_x = torch.cat([train_x, candidate_x.to(train_x.device)])
    pool_y = torch.cat([torch.as_tensor(train_y).long().cpu(), torch.as_tensor(candidate_y).long().cpu()])
    counts, _ = track_forgetting(
        pool_x, pool_y, epochs=epochs, batch_size=batch_size, seed=seed, progress=progress, device=device
    )
    n_train = train_x.shape[0]
    return counts[n_train:], counts[:n_train]


@dataclass
class Candidates:
    """Counterfactuals offered to the selection: images, parents (disease = the intervened class), provenance."""

    x: torch.Tensor
    pa: dict
    source_ids: list
    disease: torch.Tensor


def random_other_disease(disease, num_classes, generator):
    """For each factual class, a class drawn uniformly from the OTHER classes (a real change of disease)."""
    offset = torch.randint(1, num_classes, disease.shape, generator=generator)
    return (disease.long() + offset) % num_classes


@torch.no_grad()
def generate_candidates(model, dataset, n_candidates, seed=0, batch_size=64, disease_node="disease", num_classes=3):
    """Counterfactuals of randomly chosen training images under random disease interventions.

    Each chosen image is intervened to a disease other than its own, so every candidate carries a change the
    generator must learn. `model.counterfactual(x, pa, do)` gives the image and the counterfactual parents; parents
    of the data set that the model does not return keep the source image's values, and the disease label is the
    intervened one.
    """
    generator = torch.Generator().manual_seed(seed)
    n = len(dataset.ids)
    chosen = torch.randperm(n, generator=generator)[: min(n_candidates, n)]
    disease = random_other_disease(dataset.pa[disease_node][chosen], num_classes, generator)
    device = next(model.parameters()).device
    images = []
    pa_cf = {name: values[chosen].clone() for name, values in dataset.pa.items()}
    for start in range(0, len(chosen), batch_size):
        rows = chosen[start : start + batch_size]
        block = slice(start, start + len(rows))
        pa = {name: values[rows].to(device) for name, values in dataset.pa.items()}
        cf = model.counterfactual(dataset.x[rows].to(device), pa, {disease_node: disease[block].to(device)})
        images.append(cf.x_cf.detach().clamp(-1, 1).cpu())
        for name, values in cf.pa_cf.items():
            if name in pa_cf:
                pa_cf[name][block] = torch.as_tensor(values).detach().cpu().to(pa_cf[name].dtype)
    pa_cf[disease_node] = disease.to(pa_cf[disease_node].dtype)
    source_ids = [dataset.ids[i] for i in chosen.tolist()]
    return Candidates(x=torch.cat(images), pa=pa_cf, source_ids=source_ids, disease=disease)
