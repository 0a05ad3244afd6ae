"""Image and distribution metrics for counterfactual evaluation.

Images are batches shaped [N, 1, H, W] or [N, H, W] with pixels in [-1, 1] (torch tensors or numpy arrays). Per-image
metrics return a float64 array with one value per image; set-level metrics (FID) return a float. Every figure that
ends up in a report is summarised by `summarise` (mean and 95% bootstrap interval over images).
"""

import numpy as np
import scipy.linalg
import scipy.stats
import torch
from skimage.metrics import structural_similarity

PIXEL_RANGE = 2.0  # pixels live in [-1, 1]
TO_255 = 255.0 / PIXEL_RANGE  # a difference of 2 in model units is a difference of 255 grey levels


def as_images(x):
    """Return a float64 numpy array [N, H, W] from a tensor/array shaped [N, 1, H, W] or [N, H, W]."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected single-channel images [N, 1, H, W], got shape {x.shape}")
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected images shaped [N, 1, H, W] or [N, H, W], got shape {x.shape}")
    return x


def _pair(a, b):
    a, b = as_images(a), as_images(b)
    if a.shape != b.shape:
        raise ValueError(f"image batches differ in shape: {a.shape} vs {b.shape}")
    return a, b


def as_masks(mask, like):
    """Boolean numpy masks [N, H, W] matching the image batch `like`."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim == 4:
        mask = mask[:, 0]
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {mask.shape} does not match images {like.shape}")
    return mask.astype(bool)


# ----------------------------------------------------------------------------------------------------------------
# Per-image pixel metrics


def l1_255(a, b):
    """Mean absolute pixel difference per image on the 0-255 grey-level scale."""
    a, b = _pair(a, b)
    return np.abs(a - b).mean(axis=(1, 2)) * TO_255


def ssim(a, b):
    """Structural similarity per image (scikit-image, 7x7 uniform window, data range of [-1, 1]).

    Tiny images (under 7 pixels a side, only in tests) use the largest odd window that fits.
    """
    a, b = _pair(a, b)
    win = min(7, min(a.shape[1:]) - (1 - min(a.shape[1:]) % 2))
    return np.array(
        [structural_similarity(ai, bi, data_range=PIXEL_RANGE, win_size=win) for ai, bi in zip(a, b)],
        dtype=np.float64,
    )


def effect_localisation(x, x_cf, region_mask):
    """Share of each counterfactual's change mass sum|x_cf - x| that lies inside `region_mask`.

    1 means the whole change is where it should be; a shortcut (a spot elsewhere) scores near 0. An image whose
    counterfactual did not change at all has no change to locate: NaN (left out of summaries).
    """
    x, x_cf = _pair(x, x_cf)
    region = as_masks(region_mask, x)
    change = np.abs(x_cf - x)
    total = change.sum(axis=(1, 2))
    inside = (change * region).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


# ----------------------------------------------------------------------------------------------------------------
# Fréchet distance between feature distributions


def _covariance_factor(feats):
    """A matrix R with R.T @ R equal to the sample covariance of `feats` [N, F], and the mean.

    With fewer images than features (the usual case: DenseNet features have 1024 dimensions) the centred data
    scaled by 1/sqrt(N-1) is such a factor and is the smaller one; otherwise the symmetric square root of the
    covariance (eigen-decomposition, rounding negatives clipped to zero) is.
    """
    n, f = feats.shape
    mean = feats.mean(axis=0)
    centred = (feats - mean) / np.sqrt(n - 1)
    if n <= f:
        return centred, mean
    eigenvalues, eigenvectors = scipy.linalg.eigh(centred.T @ centred)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T, mean


def fid(feats_a, feats_b):
    """Fréchet distance ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature samples [N, F].

    The usual recipe takes scipy.linalg.sqrtm of the non-symmetric product S_a S_b; with fewer images than feature
    dimensions both covariances are singular, and sqrtm then returns complex parts and noise of the order of the
    answer. Only the trace is needed, and it has an exact real form: with factors S_a = R_a^T R_a and
    S_b = R_b^T R_b, the eigenvalues of S_a S_b are the squared singular values of R_a R_b^T, so
    Tr((S_a S_b)^(1/2)) is the sum of those singular values (the nuclear norm). That is what is computed here; it
    agrees with sqrtm wherever sqrtm is well conditioned, never produces complex numbers, and the result is clipped
    at 0 against rounding.
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"FID needs two feature matrices [N, F] with the same F, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs at least two samples on each side, got {len(a)} and {len(b)}")
    root_a, mean_a = _covariance_factor(a)
    root_b, mean_b = _covariance_factor(b)
    trace_a = np.sum(root_a * root_a)
    trace_b = np.sum(root_b * root_b)
    trace_sqrt_product = scipy.linalg.svdvals(root_a @ root_b.T).sum()
    distance = np.sum((mean_a - mean_b) ** 2) + trace_a + trace_b - 2.0 * trace_sqrt_product
    return float(max(distance, 0.0))


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap intervals


def bootstrap_ci(values, n_boot=1000, seed=0, level=0.95):
    """Mean of `values` and its percentile-bootstrap interval: (mean, low, high). NaNs are left out."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one non-NaN value")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(values.mean()), float(low), float(high)


def bootstrap_statistic(statistic, n, n_boot=1000, seed=0, level=0.95):
    """A set-level statistic(indices) (FID, AUROC) and its percentile-bootstrap interval over the n items.

    Replicates where the statistic is undefined (it returns NaN, e.g. AUROC on a resample with one class) are
    left out of the interval.
    """
    rng = np.random.default_rng(seed)
    estimate = float(statistic(np.arange(n)))
    replicates = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_boot)], dtype=np.float64)
    replicates = replicates[~np.isnan(replicates)]
    if replicates.size == 0:
        return estimate, float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail])
    return estimate, float(low), float(high)


def summarise(values, n_boot=1000, seed=0):
    """JSON-ready summary of per-image values: mean, 95% bootstrap interval and the count of defined values."""
    values = np.asarray(values, dtype=np.float64).ravel()
    defined = int(np.sum(~np.isnan(values)))
    if defined == 0:
        return {"mean": None, "ci95": [None, None], "n": 0}
    mean, low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    return {"mean": mean, "ci95": [low, high], "n": defined}


def summarise_statistic(statistic, n, n_boot=1000, seed=0):
    """JSON-ready summary of a set-level statistic over n items (see `bootstrap_statistic`)."""
    estimate, low, high = bootstrap_statistic(statistic, n, n_boot=n_boot, seed=seed)
    clean = [None if np.isnan(v) else v for v in (estimate, low, high)]
    return {"mean": clean[0], "ci95": clean[1:], "n": int(n)}


def paired_fid_summary(feats_a, feats_b, n_boot=200, seed=0):
    """FID between two paired feature sets with a bootstrap interval that resamples images (pairs) jointly."""
    feats_a = np.asarray(feats_a, dtype=np.float64)
    feats_b = np.asarray(feats_b, dtype=np.float64)
    return summarise_statistic(lambda idx: fid(feats_a[idx], feats_b[idx]), len(feats_a), n_boot=n_boot, seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# Error against the true counterfactual (phantom data, where the true counterfactual can be rendered)


def removal_error(x, x_cf, x_true):
    """Removal (do(D := healthy) on a diseased image) is identifiable, so it is judged pixel by pixel.

    Returns per-image arrays: L1 (0-255) and SSIM of the model's counterfactual against the true one, and the same
    for the trivial answer that returns the input unchanged. A model worth having beats the trivial answer.
    """
    return {
        "l1_model": l1_255(x_cf, x_true),
        "ssim_model": ssim(x_cf, x_true),
        "l1_identity": l1_255(x, x_true),
        "ssim_identity": ssim(x, x_true),
    }


def _addition_scores(x, x_cf, x_true, region, threshold):
    changed = np.abs(x_cf - x) > threshold
    iou = np.full(len(x), np.nan)
    share = effect_localisation(x, x_cf, region)
    wasserstein = np.full(len(x), np.nan)
    mean_difference = np.full(len(x), np.nan)
    for i in range(len(x)):
        if not region[i].any():
            continue
        union = np.logical_or(changed[i], region[i]).sum()
        iou[i] = np.logical_and(changed[i], region[i]).sum() / union
        inside_model = x_cf[i][region[i]] * TO_255
        inside_true = x_true[i][region[i]] * TO_255
        wasserstein[i] = scipy.stats.wasserstein_distance(inside_model, inside_true)
        mean_difference[i] = inside_model.mean() - inside_true.mean()
    return {"iou": iou, "share_inside": share, "wasserstein": wasserstein, "mean_difference": mean_difference}


def addition_error(x, x_cf, x_true, true_region, threshold=0.1):
    """Addition (do(D := lesion) on a healthy image) is judged on the true change region, not pixel by pixel.

    Where a lesion sits is exogenous and cannot be read off a healthy image, so a pixel-exact comparison would only
    measure luck. Per image, on the region the true counterfactual changes:
    - iou: overlap of the model's changed area (|x_cf - x| > threshold, in [-1, 1] units; 0.1 is ~13 grey
      levels) with the true region;
    - share_inside: share of the model's change mass inside the true region (effect localisation);
    - wasserstein: Wasserstein-1 distance (grey levels) between the model's and the true counterfactual's pixel
      values inside the region, i.e. whether the right amount of opacity appeared there;
    - mean_difference: mean grey level inside the region, model minus truth (negative: lesion too faint).
    Each comes as `<name>_model` and `<name>_identity` (the input returned unchanged). Images whose true region is
    empty are NaN.
    """
    x, x_cf = _pair(x, x_cf)
    _, x_true = _pair(x, x_true)
    region = as_masks(true_region, x)
    results = {}
    for label, candidate in (("model", x_cf), ("identity", x)):
        for name, values in _addition_scores(x, candidate, x_true, region, threshold).items():
            results[f"{name}_{label}"] = values
    return results


# ----------------------------------------------------------------------------------------------------------------
# Classification figures


def auroc(is_positive, scores):
    """Area under the ROC curve via the Mann-Whitney U statistic (tied scores count half), NaN with one class.

    Equal to sklearn's roc_auc_score, but cheap enough to be recomputed on a thousand bootstrap resamples.
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    n_positive = int(is_positive.sum())
    n_negative = is_positive.size - n_positive
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    ranks = scipy.stats.rankdata(np.asarray(scores, dtype=np.float64))
    u_statistic = ranks[is_positive].sum() - n_positive * (n_positive + 1) / 2.0
    return float(u_statistic / (n_positive * n_negative))


def macro_auroc(labels, probabilities):
    """One-vs-rest AUROC averaged over the classes that occur (and do not make up all labels); NaN if none does.

    labels: int [N]; probabilities: [N, K] (a binary parent has K = 2 and gives the ordinary AUROC).
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    per_class = [auroc(labels == k, probabilities[:, k]) for k in range(probabilities.shape[1])]
    per_class = [value for value in per_class if not np.isnan(value)]
    return float(np.mean(per_class)) if per_class else float("nan")


# ----------------------------------------------------------------------------------------------------------------
# Feature space for FID


@torch.no_grad()
def features(model, x, batch_size=128):
    """Penultimate-layer features [N, F] (numpy float64) of images in [-1, 1], the space FID is computed in.

    Understands, in this order:
    - the expert wrapper (generator/training/expert.py: `.classifier` + `.to_classifier_input`), whose xrv
      classifier's pooled DenseNet features are taken after the wrapper's own rescaling and resizing;
    - a bare TorchXrayVision model (anything with `features2`), fed xrv's [-1024, 1024] pixel scale;
    - any module with `features(x)` (e.g. the evaluation predictors); 4-D outputs are average-pooled.
    """
    if hasattr(model, "classifier") and hasattr(model, "to_classifier_input"):
        network = model.classifier

        def extract(batch):
            return network.features2(model.to_classifier_input(batch))
    elif hasattr(model, "features2"):
        network = model

        def extract(batch):
            return network.features2(batch.clamp(-1.0, 1.0) * 1024.0)
    elif hasattr(model, "features"):
        network = model

        def extract(batch):
            out = network.features(batch)
            return out.mean(dim=(2, 3)) if out.dim() == 4 else out
    else:
        raise TypeError(f"cannot take FID features from {type(model).__name__}: no features/features2 method")
    was_training = network.training
    network.eval()
    try:
        device = next(network.parameters()).device
        x = torch.as_tensor(x, dtype=torch.float32)
        chunks = [extract(x[i : i + batch_size].to(device)).flatten(1).cpu() for i in range(0, x.shape[0], batch_size)]
    finally:
        network.train(was_training)
    return torch.cat(chunks).double().numpy()
