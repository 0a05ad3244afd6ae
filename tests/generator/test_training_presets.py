"""Presets: the paper's Appendix B settings, serialisation, and a test preset that is fast enough for tests."""

import time

import pytest
import torch

from generator.causal.hvae import ConditionalHVAE
from generator.data.graph import MIMIC_GRAPH
from generator.training.pipeline import RunConfig
from generator.training.presets import PRESETS, Preset, get_preset


def test_paper_preset_follows_appendix_b():
    p = get_preset("paper-192")
    assert p.resolution == 192
    assert p.latent_resolutions == (1, 6, 12, 24, 48, 96)
    assert p.blocks[:6] == (2, 4, 8, 12, 8, 4)
    assert p.widths == (512, 192, 160, 128, 96, 64, 32)
    assert p.z_channels == 16
    assert (p.lr, p.betas, p.weight_decay, p.warmup_steps) == (5e-5, (0.9, 0.9), 0.1, 100)
    assert (p.grad_clip, p.skip_threshold, p.ema_rate, p.batch_size) == (350.0, 500.0, 0.999, 32)
    assert (p.pad, p.random_crop, p.hflip) == (9, True, True)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_survives_a_round_trip_through_a_dict(name):
    preset = get_preset(name)
    assert Preset.from_dict(preset.to_dict()) == preset


def test_get_preset_returns_an_independent_copy_and_rejects_unknown_names():
    get_preset("cpu-64").lr = 1.0
    assert get_preset("cpu-64").lr != 1.0
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("huge-1024")


def test_run_config_round_trip_and_validation():
    config = RunConfig(preset="test-32", variant="expert", seed=7, steps={"hvae": 3}, expert_beta=4.0)
    assert RunConfig.from_dict(config.to_dict()) == config
    assert config.stage_steps(get_preset("test-32"), "hvae") == 3
    with pytest.raises(ValueError, match="variant"):
        RunConfig(variant="magic")
    with pytest.raises(ValueError, match="unknown stages"):
        RunConfig(steps={"warmup": 3})


@pytest.mark.ml
def test_a_test_preset_step_takes_well_under_a_second():
    torch.set_num_threads(1)
    preset = get_preset("test-32")
    hvae = ConditionalHVAE(preset, MIMIC_GRAPH)
    n = preset.batch_size
    pa = {
        "age": torch.full((n,), 50.0),
        "sex": torch.zeros(n),
        "race": torch.zeros(n, dtype=torch.long),
        "wcc": torch.full((n,), 8.0),
        "disease": torch.arange(n) % 3,
    }
    x = torch.rand(n, 1, 32, 32) * 2 - 1
    hvae.elbo(x, pa)["free_energy"].mean().backward()  # warm-up
    started = time.perf_counter()
    for _ in range(3):
        hvae.elbo(x, pa)["free_energy"].mean().backward()
    assert (time.perf_counter() - started) / 3 < 0.5
