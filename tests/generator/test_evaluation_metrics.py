"""Each evaluation metric on hand-made inputs whose answers are worked out independently."""

import numpy as np
import pytest
import scipy.linalg
import torch

from generator.evaluation import metrics


def random_images(n=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.uniform(-0.8, 0.8, size=(n, 1, size, size)), dtype=torch.float32)


def test_identical_images_have_zero_l1_and_unit_ssim():
    x = random_images()
    assert np.allclose(metrics.l1_255(x, x.clone()), 0.0)
    assert np.allclose(metrics.ssim(x, x.clone()), 1.0)


def test_constant_shift_gives_the_expected_grey_level_l1():
    x = random_images()
    # 0.1 in [-1, 1] units is 0.1 * 255 / 2 = 12.75 grey levels, whatever the image.
    assert np.allclose(metrics.l1_255(x, x + 0.1), 12.75)
    assert np.allclose(metrics.l1_255(torch.full((2, 1, 4, 4), -1.0), torch.full((2, 1, 4, 4), 1.0)), 255.0)


def test_ssim_drops_for_unrelated_images_and_is_per_image():
    a, b = random_images(seed=1), random_images(seed=2)
    values = metrics.ssim(a, b)
    assert values.shape == (4,)
    assert np.all(values < 0.2)


def test_mismatched_shapes_are_rejected_with_a_clear_error():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.l1_255(random_images(size=8), random_images(size=16))


def test_fid_of_a_sample_with_itself_is_zero():
    feats = np.random.default_rng(0).normal(size=(50, 8))
    assert metrics.fid(feats, feats) == pytest.approx(0.0, abs=1e-8)


def test_fid_is_zero_for_identical_rank_deficient_samples():
    # Fewer images than features, as with DenseNet features: both covariances are singular.
    feats = np.random.default_rng(1).normal(size=(10, 64))
    assert metrics.fid(feats, feats) == pytest.approx(0.0, abs=1e-8)


def test_fid_of_two_large_gaussian_samples_matches_the_closed_form():
    rng = np.random.default_rng(3)
    mean_a, mean_b = np.array([0.0, 0.0, 0.0]), np.array([1.0, -2.0, 0.5])
    cov_a = np.diag([1.0, 2.0, 0.5])
    cov_b = np.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 1.5]])
    a = rng.multivariate_normal(mean_a, cov_a, size=200_000)
    b = rng.multivariate_normal(mean_b, cov_b, size=200_000)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root)
    assert metrics.fid(a, b) == pytest.approx(expected, rel=0.02)


def test_fid_agrees_with_the_sqrtm_recipe_on_a_well_conditioned_sample():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(40, 5)), rng.normal(loc=0.3, scale=1.5, size=(60, 5))
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(
        cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real
    )
    assert metrics.fid(a, b) == pytest.approx(expected, rel=1e-8)
    # The rank-deficient branch (fewer images than features) gives the same answer as the full one.
    wide_a, wide_b = a[:4], b[:4]
    cov_wa, cov_wb = np.cov(wide_a, rowvar=False), np.cov(wide_b, rowvar=False)
    eig = np.linalg.eigvals(cov_wa @ cov_wb)
    expected_wide = np.sum((wide_a.mean(0) - wide_b.mean(0)) ** 2) + np.trace(cov_wa + cov_wb)
    expected_wide -= 2 * np.sqrt(np.clip(eig.real, 0, None)).sum()
    assert metrics.fid(wide_a, wide_b) == pytest.approx(expected_wide, rel=1e-6)


def test_fid_needs_two_samples_and_matching_dimensions():
    with pytest.raises(ValueError, match="at least two"):
        metrics.fid(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="same F"):
        metrics.fid(np.zeros((4, 3)), np.zeros((4, 2)))


def test_localisation_is_one_inside_and_zero_outside_the_region():
    x = torch.zeros(2, 1, 8, 8)
    region = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    region[:, :, :4, :4] = True
    x_cf = x.clone()
    x_cf[0, 0, 1:3, 1:3] = 0.5  # change fully inside
    x_cf[1, 0, 5:7, 5:7] = -0.5  # change fully outside
    assert np.allclose(metrics.effect_localisation(x, x_cf, region), [1.0, 0.0])


def test_localisation_splits_by_change_mass_and_is_undefined_without_change():
    x = torch.zeros(2, 1, 8, 8)
    region = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    region[:, :, :, :4] = True
    x_cf = x.clone()
    x_cf[0, 0, 0, 0] = 0.3  # inside, mass 0.3
    x_cf[0, 0, 0, 7] = -0.1  # outside, mass 0.1
    share = metrics.effect_localisation(x, x_cf, region)
    assert share[0] == pytest.approx(0.75)
    assert np.isnan(share[1])


def test_bootstrap_interval_contains_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small, large = rng.normal(5.0, 1.0, size=20), rng.normal(5.0, 1.0, size=2000)
    mean, low, high = metrics.bootstrap_ci(small, n_boot=500, seed=1)
    assert mean == pytest.approx(small.mean())
    assert low < mean < high
    _, low_large, high_large = metrics.bootstrap_ci(large, n_boot=500, seed=1)
    assert high_large - low_large < high - low
    # The interval of a mean of N(5, 1) from 2000 draws is about +-1.96/sqrt(2000) = +-0.044.
    assert (high_large - low_large) / 2 == pytest.approx(1.96 / np.sqrt(2000), rel=0.2)


def test_bootstrap_is_reproducible_under_a_seed_and_ignores_nans():
    values = np.array([1.0, 2.0, np.nan, 4.0])
    assert metrics.bootstrap_ci(values, seed=7) == metrics.bootstrap_ci(values, seed=7)
    assert metrics.bootstrap_ci(values, seed=7)[0] == pytest.approx(7.0 / 3.0)
    summary = metrics.summarise(values, seed=7)
    assert summary["n"] == 3 and summary["ci95"][0] <= summary["mean"] <= summary["ci95"][1]
    assert metrics.summarise([np.nan]) == {"mean": None, "ci95": [None, None], "n": 0}


def test_bootstrap_statistic_resamples_items_for_set_level_figures():
    values = np.arange(10, dtype=float)
    estimate, low, high = metrics.bootstrap_statistic(lambda idx: values[idx].max(), 10, n_boot=200, seed=0)
    assert estimate == 9.0 and low <= high <= 9.0


def test_removal_error_prefers_the_true_counterfactual_over_returning_the_input():
    x_true = torch.zeros(3, 1, 16, 16)
    x = x_true.clone()
    x[:, :, 10:14, 2:8] = 0.6  # the lesion to remove
    errors = metrics.removal_error(x, x_true.clone(), x_true)
    assert np.allclose(errors["l1_model"], 0.0) and np.allclose(errors["ssim_model"], 1.0)
    # Returning the input leaves 24 of 256 pixels off by 0.6 (76.5 grey levels): 76.5 * 24 / 256.
    assert np.allclose(errors["l1_identity"], 76.5 * 24 / 256)
    assert np.all(errors["ssim_identity"] < 1.0)


def test_addition_error_scores_overlap_and_intensity_in_the_true_region():
    x = torch.zeros(2, 1, 16, 16)
    x_true = x.clone()
    x_true[:, :, 10:14, 2:6] = 0.5
    region = x_true != x
    x_cf = x.clone()
    x_cf[0, 0, 10:14, 2:6] = 0.5  # the right lesion in the right place
    x_cf[1, 0, 0:4, 10:14] = 0.5  # the right lesion in the wrong place
    errors = metrics.addition_error(x, x_cf, x_true, region)
    assert errors["iou_model"] == pytest.approx([1.0, 0.0])
    assert errors["share_inside_model"] == pytest.approx([1.0, 0.0])
    assert errors["wasserstein_model"] == pytest.approx([0.0, 63.75])
    assert errors["mean_difference_model"] == pytest.approx([0.0, -63.75])
    assert errors["iou_identity"] == pytest.approx([0.0, 0.0])
    assert np.all(np.isnan(errors["share_inside_identity"]))
    assert errors["wasserstein_identity"] == pytest.approx([63.75, 63.75])


def test_addition_error_is_undefined_where_the_true_counterfactual_changes_nothing():
    x = torch.zeros(1, 1, 8, 8)
    errors = metrics.addition_error(x, x + 0.5, x.clone(), torch.zeros(1, 1, 8, 8, dtype=torch.bool))
    assert np.isnan(errors["iou_model"][0]) and np.isnan(errors["wasserstein_model"][0])


def test_auroc_matches_sklearn_including_ties_and_is_undefined_for_one_class():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=200).astype(bool)
    scores = np.round(rng.normal(size=200) + labels, 1)  # rounding makes ties
    assert metrics.auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert np.isnan(metrics.auroc(np.ones(5, bool), np.arange(5)))


def test_macro_auroc_is_one_for_perfect_probabilities_and_half_for_constant_ones():
    labels = np.array([0, 1, 2, 0, 1, 2])
    assert metrics.macro_auroc(labels, np.eye(3)[labels]) == pytest.approx(1.0)
    assert metrics.macro_auroc(labels, np.full((6, 3), 1 / 3)) == pytest.approx(0.5)
    # A class that never occurs is left out of the average instead of making it undefined.
    assert metrics.macro_auroc(np.array([0, 1, 0, 1]), np.eye(3)[[0, 1, 0, 1]]) == pytest.approx(1.0)
