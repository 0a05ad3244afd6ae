"""The expert model of the proposed generator (Sec. 2.3, Eq. 2 of the paper) and its constraint term.

An expert is any TorchXrayVision classifier. It is read by pathology NAME through the classifier's `pathologies`
list, so a pretrained 18-output DenseNet and the project's own 2-output classifier plug in the same way. Pixels
arrive from the generator in [-1, 1] and are mapped to xrv's [-1024, 1024] scale and resized to the classifier's
input resolution inside the wrapper, so gradients flow from the expert's probabilities back to the generator.

Where the expert comes from:
- `load_expert("densenet121-res224-all")` (or any other xrv weights name) uses the weights file only if it is
  already in xrv's cache directory; nothing is ever downloaded (the training machines are offline).
- `load_expert("/some/path.pt")` loads either an xrv weights file (recognised by its published file name) or a
  classifier saved by `train_expert`.
- Without pretrained weights, `train_expert` trains a small xrv DenseNet on the training split at the data's
  resolution, records its validation AUROC per class and saves it as a state_dict.
"""

import os
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchxrayvision as xrv
from sklearn.metrics import roc_auc_score
from torch import nn

from generator.data.graph import DISEASE_CLASSES

EFFUSION = "Effusion"
PNEUMONIA = "Pneumonia"
NO_FINDING = "No Finding"
# Expert output read for each disease class of the causal graph, in DISEASE_CLASSES order.
EXPERT_NAME_OF_CLASS = {"healthy": NO_FINDING, "effusion": EFFUSION, "pneumonia": PNEUMONIA}
XRV_PIXEL_SCALE = 1024.0

# A DenseNet of the xrv architecture small enough to train on CPU in minutes at 64 px.
SMALL_DENSENET = {"growth_rate": 12, "block_config": (2, 2, 2, 2), "num_init_features": 24, "bn_size": 2}
SAVED_EXPERT_FORMAT = "xrv-densenet-state-dict-v1"
LABEL_SMOOTHING = 0.05


class ExpertModel(nn.Module):
    """A frozen TorchXrayVision classifier that judges generator images.

    "No Finding" is not an output of xrv's classifiers. Unless the classifier has one, it is derived as the
    probability that neither finding is present when the two outputs are read as independent:
    P(No Finding) = (1 - P(Effusion)) * (1 - P(Pneumonia)). Unlike 1 - max(...), it is smooth, so the expert
    term's gradient for do(healthy) lowers both findings instead of only the larger one.
    """

    def __init__(self, classifier, input_resolution=None, outputs_probabilities=None):
        super().__init__()
        self.classifier = classifier
        self.pathologies = list(getattr(classifier, "pathologies", None) or classifier.targets)
        for name in (EFFUSION, PNEUMONIA):
            if name not in self.pathologies:
                raise ValueError(f"expert classifier {classifier!r} has no {name!r} output (has {self.pathologies})")
        self.input_resolution = int(input_resolution or getattr(classifier, "input_resolution", 224))
        if outputs_probabilities is None:
            # xrv classifiers return probabilities when they carry operating-point thresholds or apply a sigmoid.
            outputs_probabilities = getattr(classifier, "op_threshs", None) is not None or bool(
                getattr(classifier, "apply_sigmoid", False)
            )
        self.outputs_probabilities = outputs_probabilities
        self.classifier.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        """The expert is a fixed judge: it stays in inference mode whatever its owner asks for."""
        return super().train(False)

    def to_classifier_input(self, x):
        """Generator pixels in [-1, 1] -> xrv's [-1024, 1024] scale at the classifier's resolution."""
        if x.shape[-1] != self.input_resolution or x.shape[-2] != self.input_resolution:
            x = F.interpolate(
                x, size=(self.input_resolution, self.input_resolution), mode="bilinear", align_corners=False
            )
        return x.clamp(-1.0, 1.0) * XRV_PIXEL_SCALE

    def probabilities(self, x):
        """Dict pathology name -> Tensor[N] of probabilities, including the derived "No Finding"."""
        out = self.classifier(self.to_classifier_input(x))
        probs = out if self.outputs_probabilities else torch.sigmoid(out)
        named = {name: probs[:, i] for i, name in enumerate(self.pathologies)}
        if NO_FINDING not in named:
            named[NO_FINDING] = (1.0 - named[EFFUSION]) * (1.0 - named[PNEUMONIA])
        return named

    def disease_probabilities(self, x):
        """Tensor[N, 3] of the expert's probability for each disease class, ordered as DISEASE_CLASSES."""
        named = self.probabilities(x)
        return torch.stack([named[EXPERT_NAME_OF_CLASS[c]] for c in DISEASE_CLASSES], dim=1)

    def forward(self, x):
        return self.disease_probabilities(x)


def expert_constraint(expert, x, x_cf, target_disease, alpha, beta, threshold, factual_disease=None):
    """Eq. 2's expert term, alpha * log(1 + beta * shortfall), averaged over the batch.

    For each counterfactual the expert's probability of the INTERVENED class (P(Effusion) for do(effusion),
    P(Pneumonia) for do(pneumonia), P(No Finding) for do(healthy)) must rise from the factual image to the
    counterfactual by at least `threshold`:

        shift     = p_k(x_cf) - p_k(x)            k = intervened class
        shortfall = max(0, threshold - shift)
        term      = alpha * log(1 + beta * shortfall)

    Why not the paper's literal alpha * log(1 + beta * |p(x) - p(x_cf)|): that expression is ADDED to a Lagrangian
    being minimised, so it would reward counterfactuals the expert cannot tell from their input, the opposite of the
    stated aim (the constraint log(1 + beta|dp|) >= d, "maximising the difference"). The signed shift also stops a
    change in the wrong direction from counting as success. The hinge makes the term vanish once the expert sees
    the intended change, and the log keeps a large shortfall from swamping the ELBO constraint. The threshold
    here is on the probability shift itself; the paper's d corresponds to log(1 + beta * threshold).

    Examples whose intervention keeps their factual disease (`factual_disease` given and equal) contribute zero:
    for them the right answer is no change, which the rest of the objective already asks for. The factual
    probabilities carry no gradient; the counterfactual's graph is kept so the generator is trained by this term.
    """
    target_disease = target_disease.long().to(x_cf.device)
    with torch.no_grad():
        factual_probs = expert.disease_probabilities(x)
    counterfactual_probs = expert.disease_probabilities(x_cf)
    rows = torch.arange(x_cf.shape[0], device=x_cf.device)
    shift = counterfactual_probs[rows, target_disease] - factual_probs[rows, target_disease]
    term = alpha * torch.log1p(beta * F.relu(threshold - shift))
    if factual_disease is not None:
        term = term * (target_disease != factual_disease.long().to(x_cf.device)).to(term.dtype)
    return term.mean()


def make_expert_extra_loss(expert, alpha, beta, threshold, disease_node="disease"):
    """The expert term as an `extra_loss(model, x, pa, cf, do)` callable for the counterfactual stage.

    `cf` is the stage's counterfactual (its `.x_cf` is differentiable w.r.t. the generator) and `do` the
    intervention it was made under. Batches whose intervention leaves the disease alone add nothing.
    """

    def expert_extra_loss(model, x, pa, cf, do):
        if disease_node not in do:
            return x.new_zeros(())
        if next(expert.parameters()).device != x.device:
            expert.to(x.device)
        value = do[disease_node]
        if isinstance(value, str):
            value = DISEASE_CLASSES.index(value)
        target = torch.as_tensor(value, device=x.device).long().expand(x.shape[0])
        return expert_constraint(
            expert, x, cf.x_cf, target, alpha, beta, threshold, factual_disease=pa[disease_node].to(x.device)
        )

    return expert_extra_loss


def pretrained_weights_path(weights, cache_dir=None):
    """Local file of the named xrv weights, or None when it is not on disk. Never downloads."""
    if weights not in xrv.models.model_urls:
        raise ValueError(f"unknown TorchXrayVision weights {weights!r}; known: {sorted(xrv.models.model_urls)}")
    filename = os.path.basename(xrv.models.model_urls[weights]["weights_url"])
    path = os.path.join(os.path.expanduser(cache_dir or xrv.utils.get_cache_dir()), filename)
    return path if os.path.isfile(path) else None


def _weights_name_of_file(path):
    """The xrv weights name whose published file name is `path`'s, if any (prefers the long 'densenet121-...')."""
    filename = os.path.basename(path)
    names = [n for n, spec in xrv.models.model_urls.items() if os.path.basename(spec["weights_url"]) == filename]
    return max(names, key=len) if names else None


def load_expert(weights, cache_dir=None):
    """An ExpertModel from xrv weights or a saved classifier, or None when nothing is available locally.

    `weights` is an xrv weights name (looked up in xrv's cache dir or `cache_dir`, never downloaded), a path to an
    xrv weights file, a path to a classifier saved by `train_expert`, or None.
    """
    if weights is None:
        return None
    if weights in xrv.models.model_urls:
        path = pretrained_weights_path(weights, cache_dir)
        if path is None:
            return None
        return ExpertModel(xrv.models.get_model(weights, cache_dir=os.path.dirname(path)))
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"expert weights file {weights!r} does not exist")
    xrv_name = _weights_name_of_file(weights)
    if xrv_name is not None:
        return ExpertModel(xrv.models.get_model(xrv_name, cache_dir=os.path.dirname(os.path.abspath(weights))))
    saved = torch.load(weights, map_location="cpu", weights_only=False)
    if not isinstance(saved, dict) or saved.get("format") != SAVED_EXPERT_FORMAT:
        raise ValueError(f"{weights!r} is neither a TorchXrayVision weights file nor an expert saved by train_expert")
    classifier = _small_densenet(saved["pathologies"], saved["input_resolution"], saved["architecture"])
    classifier.load_state_dict(saved["state_dict"])
    return ExpertModel(classifier)


def _small_densenet(pathologies, input_resolution, architecture):
    classifier = xrv.models.DenseNet(num_classes=len(pathologies), in_channels=1, **architecture)
    classifier.pathologies = list(pathologies)
    classifier.targets = list(pathologies)
    classifier.input_resolution = int(input_resolution)
    return classifier


def _finding_targets(disease):
    """Multi-label targets [N, 2] (Effusion, Pneumonia) from disease codes 0 healthy / 1 effusion / 2 pneumonia."""
    return torch.stack([disease == 1, disease == 2], dim=1).float()


def validation_auroc(expert, dataset, batch_size=256):
    """AUROC per class (Effusion, Pneumonia, No Finding) of the expert on a labelled data set, one-vs-rest.

    A class absent from (or the only class in) the data has no AUROC and is reported as None.
    """
    disease = dataset.pa["disease"].long().cpu().numpy()
    device = next(expert.parameters()).device
    scores = {EFFUSION: [], PNEUMONIA: [], NO_FINDING: []}
    with torch.no_grad():
        for start in range(0, len(disease), batch_size):
            named = expert.probabilities(dataset.x[start : start + batch_size].to(device))
            for name in scores:
                scores[name].append(named[name].cpu().numpy())
    positives = {EFFUSION: disease == 1, PNEUMONIA: disease == 2, NO_FINDING: disease == 0}
    auroc = {}
    for name, is_positive in positives.items():
        if is_positive.all() or not is_positive.any():
            auroc[name] = None
        else:
            auroc[name] = float(roc_auc_score(is_positive, np.concatenate(scores[name])))
    return auroc


def train_expert(
    train_set,
    valid_set,
    out_path,
    steps=400,
    batch_size=64,
    lr=2e-3,
    seed=0,
    progress=None,
    architecture=None,
    device=None,
    time_budget=None,
):
    """Train a small xrv-architecture classifier for Effusion and Pneumonia and save it as a state_dict.

    Trains at the data's own resolution (the classifier's `input_resolution`), so the wrapper never resizes, on
    `device` (default: CUDA when present).
    Returns (ExpertModel, {"auroc": {...}, "steps": steps done, "planned_steps": steps, "path": out_path});
    `progress("expert", fraction, message)` is called now and then, like the pipeline's stages. With `time_budget`
    (seconds) training stops when it runs out, whatever the steps.
    """
    started = time.monotonic()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    architecture = dict(architecture or SMALL_DENSENET)
    resolution = int(train_set.x.shape[-1])
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    classifier = _small_densenet([EFFUSION, PNEUMONIA], resolution, architecture).to(device)
    optimiser = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(steps, 1))
    # Label smoothing keeps the expert's logits moderate: a saturated sigmoid would give the generator no gradient.
    targets = _finding_targets(train_set.pa["disease"].long()) * (1 - 2 * LABEL_SMOOTHING) + LABEL_SMOOTHING
    n = train_set.x.shape[0]
    classifier.train()
    done = 0
    for step in range(steps):
        if time_budget is not None and time.monotonic() - started > time_budget:
            break
        done = step + 1
        batch = torch.randint(0, n, (min(batch_size, n),), generator=generator)
        logits = classifier(train_set.x[batch].to(device).clamp(-1, 1) * XRV_PIXEL_SCALE)
        loss = F.binary_cross_entropy_with_logits(logits, targets[batch].to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if progress is not None and (step % 50 == 0 or step == steps - 1):
            progress("expert", (step + 1) / steps, f"step {step + 1}/{steps} loss {loss.item():.3f}")
    classifier.eval()
    expert = ExpertModel(classifier, outputs_probabilities=False)
    auroc = validation_auroc(expert, valid_set)
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    torch.save(
        {
            "format": SAVED_EXPERT_FORMAT,
            "pathologies": classifier.pathologies,
            "input_resolution": resolution,
            "architecture": architecture,
            "state_dict": {k: v.cpu() for k, v in classifier.state_dict().items()},
            "auroc": auroc,
            "steps": done,
            "seed": seed,
        },
        out_path,
    )
    return expert, {"auroc": auroc, "steps": done, "planned_steps": steps, "path": str(out_path)}
