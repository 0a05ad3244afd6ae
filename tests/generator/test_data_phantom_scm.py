"""The phantom SCM: determinism, the causal graph, and true counterfactuals."""

import numpy as np
import pytest
import torch

from generator.data import CHESTXRAY8_GRAPH, MIMIC_GRAPH, PhantomSCM, make_phantom_splits
from generator.data.phantom import EFFUSION, HEALTHY, PNEUMONIA


@pytest.fixture(scope="module")
def scm():
    return PhantomSCM(MIMIC_GRAPH)


@pytest.fixture(scope="module")
def batch(scm):
    pa, u = scm.sample(96, 7)
    x, masks = scm.render(pa, u, 64)
    return pa, u, x, masks


def test_sampling_and_rendering_are_reproducible_from_a_seed(scm):
    pa1, u1 = scm.sample(20, 3)
    pa2, u2 = scm.sample(20, 3)
    for name in pa1:
        assert torch.equal(pa1[name], pa2[name])
    for name, value in u1.items():
        assert torch.equal(value, u2[name])
    x1, m1 = scm.render(pa1, u1, 48)
    x2, m2 = scm.render(pa2, u2, 48)
    assert torch.equal(x1, x2) and torch.equal(m1["effusion"], m2["effusion"])
    other, _ = scm.sample(20, 4)
    assert not torch.equal(other["age"], pa1["age"])


def test_images_are_in_range_at_any_resolution(scm):
    pa, u = scm.sample(4, 0)
    for resolution in (32, 64, 128):
        x, masks = scm.render(pa, u, resolution)
        assert x.shape == (4, 1, resolution, resolution) and x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0
        assert masks["pneumonia"].shape == x.shape and masks["pneumonia"].dtype == torch.bool


def test_lungs_are_darker_than_the_heart(batch):
    _, _, x, _ = batch
    size = x.shape[-1]
    # Mid-zone of the image-left lung vs the heart just left of the midline, above the diaphragm.
    lung = x[:, 0, int(0.40 * size) : int(0.50 * size), int(0.15 * size) : int(0.25 * size)].mean()
    heart = x[:, 0, int(0.60 * size) : int(0.66 * size), int(0.52 * size) : int(0.62 * size)].mean()
    assert heart - lung > 0.5


def test_gumbel_max_disease_frequencies_match_the_softmax_of_the_logits(scm):
    pa, _ = scm.sample(20000, 11)
    expected = scm.disease_probabilities(pa).mean(0)
    observed = torch.bincount(pa["disease"], minlength=3).float() / 20000
    assert torch.allclose(observed, expected, atol=0.015)
    assert 0.35 < observed[HEALTHY] < 0.55 and observed[EFFUSION] > 0.2 and observed[PNEUMONIA] > 0.2


def test_intervening_on_wcc_changes_the_disease_distribution(scm):
    pa, u = scm.sample(4000, 5)
    low = scm.intervene(pa, u, {"wcc": 4.0})["disease"]
    high = scm.intervene(pa, u, {"wcc": 20.0})["disease"]
    assert (high == PNEUMONIA).float().mean() > (low == PNEUMONIA).float().mean() + 0.3
    old = scm.intervene(pa, u, {"age": 85.0})["disease"]
    young = scm.intervene(pa, u, {"age": 25.0})["disease"]
    assert (old == EFFUSION).float().mean() > (young == EFFUSION).float().mean() + 0.2


def test_intervening_on_disease_leaves_its_parents_and_other_roots_unchanged(scm):
    pa, u = scm.sample(50, 1)
    pa_cf = scm.intervene(pa, u, {"disease": PNEUMONIA})
    assert torch.all(pa_cf["disease"] == PNEUMONIA)
    for name in ("age", "sex", "race", "wcc"):
        assert torch.equal(pa_cf[name], pa[name])


def test_intervening_with_the_factual_values_reproduces_the_factual_parents(scm):
    pa, u = scm.sample(200, 2)
    pa_cf = scm.intervene(pa, u, {"age": pa["age"], "wcc": pa["wcc"]})
    assert torch.equal(pa_cf["disease"], pa["disease"])


def test_do_disease_to_its_own_value_returns_the_identical_image(scm, batch):
    pa, u, x, _ = batch
    x_cf, pa_cf, _ = scm.true_counterfactual(pa, u, {"disease": pa["disease"]}, 64)
    assert torch.equal(x_cf, x)
    assert not scm.change_region(pa, u, pa_cf, 64).any()


def test_adding_an_effusion_changes_only_a_basal_region_and_leaves_anatomy_unchanged(scm, batch):
    pa, u, x, _ = batch
    healthy = torch.nonzero(pa["disease"] == HEALTHY).flatten()
    pa_h, u_h, x_h = {k: v[healthy] for k, v in pa.items()}, u[healthy], x[healthy]
    x_cf, pa_cf, masks_cf = scm.true_counterfactual(pa_h, u_h, {"disease": EFFUSION}, 64)
    mask = masks_cf["effusion"]
    changed = x_cf != x_h
    assert torch.equal(changed & ~mask, torch.zeros_like(changed))  # nothing outside the lesion moves
    assert torch.equal(scm.change_region(pa_h, u_h, pa_cf, 64), mask)
    area = mask.float().mean(dim=(1, 2, 3))
    assert area.min() > 0.015 and area.max() < 0.2 and 0.03 < area.mean() < 0.12
    brightening = ((x_cf - x_h) * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3))
    assert brightening.min() > 0.2 and brightening.mean() > 0.3  # a dense opacity over dark lung, in [-1, 1] units
    assert (x_cf - x_h)[mask].quantile(0.9) > 0.5
    rows = torch.arange(64, dtype=torch.float32).view(1, 1, -1, 1)
    centre_row = (mask * rows).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3))
    assert centre_row.min() > 0.55 * 64  # basal
    for name in ("age", "sex", "race", "wcc"):
        assert torch.equal(pa_cf[name], pa_h[name])


def test_removing_a_disease_restores_the_healthy_rendering(scm, batch):
    pa, u, x, masks = batch
    for label, name in ((EFFUSION, "effusion"), (PNEUMONIA, "pneumonia")):
        index = torch.nonzero(pa["disease"] == label).flatten()
        pa_d, u_d = {k: v[index] for k, v in pa.items()}, u[index]
        x_cf, pa_cf, _ = scm.true_counterfactual(pa_d, u_d, {"disease": HEALTHY}, 64)
        healthy_render, _ = scm.render({**pa_d, "disease": torch.zeros_like(pa_d["disease"])}, u_d, 64)
        assert torch.equal(x_cf, healthy_render)
        assert torch.equal(x[index] != x_cf, masks[name][index])
        assert torch.equal(scm.change_region(pa_d, u_d, pa_cf, 64), masks[name][index])
        assert (x[index] - x_cf)[masks[name][index]].mean() > 0.2  # lesions are opacities


def test_pneumonia_lies_inside_one_lung_and_is_patchy(scm, batch):
    pa, u, x, masks = batch
    index = torch.nonzero(pa["disease"] == PNEUMONIA).flatten()
    mask = masks["pneumonia"][index]
    area = mask.float().mean(dim=(1, 2, 3))
    assert area.min() > 0.01 and area.max() < 0.15
    columns = torch.nonzero(mask)[:, 3]
    sample = torch.nonzero(mask)[:, 0]
    for i in range(len(index)):
        cols = columns[sample == i]
        assert (cols < 32).all() or (cols >= 32).all()  # one side of the chest
    healthy, _ = scm.render({k: v[index] for k, v in pa.items()} | {"disease": torch.zeros_like(index)}, u[index], 64)
    change = (x[index] - healthy)[mask]
    assert change.std() > 0.05  # textured, not a flat patch


def test_sex_changes_anatomy_but_race_changes_nothing(scm, batch):
    pa, u, x, _ = batch
    x_race, pa_race, _ = scm.true_counterfactual(pa, u, {"race": (pa["race"] + 1) % 3}, 64)
    assert torch.equal(x_race, x)
    flipped = 1.0 - pa["sex"]
    x_sex, pa_sex, _ = scm.true_counterfactual(pa, u, {"sex": flipped}, 64)
    changed = (x_sex != x).float().mean(dim=(1, 2, 3))
    assert changed.min() > 0.05
    assert torch.equal(pa_sex["disease"], pa["disease"])  # sex is not a parent of disease
    region = scm.change_region(pa, u, pa_sex, 64)
    assert torch.equal(region | (x_sex != x), region)


def test_bad_interventions_are_rejected(scm):
    pa, u = scm.sample(3, 0)
    with pytest.raises(ValueError, match="not in graph"):
        scm.intervene(pa, u, {"height": 1.0})
    with pytest.raises(ValueError, match="category index"):
        scm.intervene(pa, u, {"disease": 3})
    with pytest.raises(ValueError, match="0 or 1"):
        scm.intervene(pa, u, {"sex": 0.5})


def test_chestxray8_variant_has_only_age_sex_and_disease():
    scm = PhantomSCM(CHESTXRAY8_GRAPH)
    pa, u = scm.sample(3000, 0)
    assert set(pa) == {"age", "sex", "disease"}
    old = scm.intervene(pa, u, {"age": 85.0})["disease"]
    young = scm.intervene(pa, u, {"age": 25.0})["disease"]
    assert (old == EFFUSION).float().mean() > (young == EFFUSION).float().mean() + 0.2


def test_phantom_splits_are_reproducible_disjoint_and_carry_the_declared_graph():
    first = make_phantom_splits(60, 32, seed=9, fractions=(0.5, 0.25, 0.25))
    second = make_phantom_splits(60, 32, seed=9, fractions=(0.5, 0.25, 0.25))
    assert [len(first[s]) for s in ("train", "valid", "test")] == [30, 15, 15]
    ids = [set(first[s].ids) for s in ("train", "valid", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert len(ids[0] | ids[1] | ids[2]) == 60
    for split in ("train", "valid", "test"):
        assert torch.equal(first[split].x, second[split].x)
        assert first[split].graph is MIMIC_GRAPH
    test = first["test"]
    # The stored noise stays aligned with its images: re-rendering a split reproduces it exactly.
    x, lesion_masks = test.scm.render(test.pa, test.u, 32)
    assert torch.equal(x, test.x) and torch.equal(lesion_masks["effusion"], test.lesion_masks["effusion"])
    image, parents = test[0]
    assert image.shape == (1, 32, 32) and set(parents) == set(MIMIC_GRAPH.names)
    assert sum(test.label_counts().values()) == 15
    assert test.parent_stats()["sex"]["counts"]["female"] == int((test.pa["sex"] == 0).sum())
    own = test.masks
    for i in range(len(test)):
        disease = int(test.pa["disease"][i])
        if disease == EFFUSION:
            assert torch.equal(own[i], test.lesion_masks["effusion"][i])
        elif disease == HEALTHY:
            assert torch.equal(own[i], test.lesion_masks["effusion"][i] | test.lesion_masks["pneumonia"][i])


def test_phantom_cache_round_trips(tmp_path):
    made = make_phantom_splits(12, 32, seed=1, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    cached = make_phantom_splits(12, 32, seed=1, cache_dir=tmp_path)
    assert torch.equal(made["train"].x, cached["train"].x)
    assert np.array_equal(made["train"].u["noise_seed"].numpy(), cached["train"].u["noise_seed"].numpy())


def test_the_plausible_zone_of_a_lesion_holds_its_true_mask_and_more_but_stays_in_the_chest(scm, batch):
    pa, u, _, _ = batch
    healthy = torch.nonzero(pa["disease"] == HEALTHY).flatten()[:12]
    sub_pa, sub_u = {k: v[healthy] for k, v in pa.items()}, u[healthy]
    for disease, name in ((EFFUSION, "effusion"), (PNEUMONIA, "pneumonia")):
        zone = scm.plausible_zone(sub_pa, sub_u, disease, 64, draws=24, rng=0)
        # the lesion this patient's own noise would give lies (nearly all) in the zone: the zone is a finite union
        _, _, masks = scm.true_counterfactual(sub_pa, sub_u, {"disease": disease}, 64)
        assert (masks[name] & zone).sum() >= 0.95 * masks[name].sum()
        # other draws of the lesion's noise reach further than one lesion, but not over the whole image
        assert zone.sum() > masks[name].sum()
        assert zone.float().mean() < 0.5
    # the zone depends on nothing but the lesion's noise: the same seed gives the same zone
    again = scm.plausible_zone(sub_pa, sub_u, EFFUSION, 64, draws=24, rng=0)
    assert torch.equal(again, scm.plausible_zone(sub_pa, sub_u, EFFUSION, 64, draws=24, rng=0))
    with pytest.raises(ValueError):
        scm.plausible_zone(sub_pa, sub_u, HEALTHY, 64)
