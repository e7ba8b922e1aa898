"""Timestep profile and sampler."""

import math

import pytest
import torch
from fakes import FakeBackend

from spare_core.timesteps import TimestepProfile, TimestepSampler, compute_profile, default_grid, smooth


def _profile(**kw) -> TimestepProfile:
    base = dict(
        grid=[10, 30, 50, 70, 90], divergence=[1, 4, 9, 4, 1], smoothed=[1, 4, 9, 4, 1], num_train_timesteps=100
    )
    base.update(kw)
    return TimestepProfile(**base)


def test_probabilities_sum_to_one_and_respect_the_floor():
    p = _profile(floor=0.2).probabilities()
    assert p.shape == (100,)
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-9)
    assert float(p.min()) >= 0.2 / 100 - 1e-12
    assert int(p.argmax()) == 50


def test_gamma_sharpens_the_distribution():
    flat, sharp = _profile(gamma=1.0).probabilities(), _profile(gamma=3.0).probabilities()
    assert sharp[50] > flat[50]
    assert sharp[10] < flat[10]


def test_sampler_matches_its_distribution():
    p = _profile(floor=0.1, gamma=2.0).probabilities()
    sampler = TimestepSampler(p)
    draws = sampler.sample(200_000, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=100).double()
    # Pearson chi-square over 10 bins of 10 timesteps (df = 9): far below the 0.001 critical value 27.9.
    observed = counts.view(10, 10).sum(1)
    expected = p.double().view(10, 10).sum(1) * len(draws)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 27.9, chi2
    # And it is not uniform: the peak bin is drawn far more than a flat sampler would.
    assert observed[5] > 2 * len(draws) / 10


def test_uniform_sampler_is_uniform():
    draws = TimestepSampler.uniform(50).sample(100_000, torch.Generator().manual_seed(1))
    counts = torch.bincount(draws, minlength=50).double()
    assert float((counts / 2000 - 1).abs().max()) < 0.08


def test_profile_finds_where_the_prompt_matters():
    # The text influence peaks at t = 70: that is where concept and surrogate differ most.
    emb = {"a red cat": torch.tensor([1.0, 0, 0, 0]), "a plain cat": torch.tensor([0.0, 1, 0, 0])}
    backend = FakeBackend(emb, weight_of_t=lambda t: math.exp(-(((t - 70) / 10) ** 2)))
    latents = torch.randn(6, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    profile = compute_profile(backend, latents, "a red cat", "a plain cat", grid=list(range(5, 100, 10)), smoothing=1)
    assert profile.peak() == 65 or profile.peak() == 75
    assert profile.divergence[0] < 0.01 * max(profile.divergence)


def test_profile_contrast_divides_out_what_all_prompts_share():
    emb = {
        "a red cat": torch.tensor([1.0, 0, 0, 0]),
        "a plain cat": torch.tensor([0.0, 1, 0, 0]),
        "a blue cat": torch.tensor([0.0, 0, 1, 0]),
        "a green cat": torch.tensor([0.0, 0, 0, 1]),
    }
    backend = FakeBackend(emb, weight_of_t=lambda t: 1.0 + t / 10)
    latents = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    raw = compute_profile(backend, latents, "a red cat", "a plain cat", grid=[10, 50, 90], smoothing=1)
    ratio = compute_profile(
        backend, latents, "a red cat", "a plain cat", ("a blue cat", "a green cat"), grid=[10, 50, 90], smoothing=1
    )
    assert raw.divergence[2] > 5 * raw.divergence[0]  # grows with t before the contrast
    assert max(ratio.divergence) < 3 * min(ratio.divergence)  # much flatter after it
    assert ratio.contrast is not None


def test_profile_save_load_round_trip(tmp_path):
    profile = _profile(concept="red", surrogate="plain", contrast=[1, 1, 1, 1, 1])
    profile.save(tmp_path / "p.json")
    assert TimestepProfile.load(tmp_path / "p.json") == profile
    (tmp_path / "bad.json").write_text('{"nope": 1}')
    with pytest.raises(ValueError, match="not a SPARE timestep profile"):
        TimestepProfile.load(tmp_path / "bad.json")


def test_profile_refuses_identical_prompts():
    backend = FakeBackend({"x": torch.ones(4)}, weight_of_t=lambda t: 1.0)
    with pytest.raises(ValueError, match="same"):
        compute_profile(backend, torch.zeros(1, 4, 4, 4), "x", "x")


def test_profile_plot_is_a_png(tmp_path):
    from spare_core.timesteps import plot_profile

    plot_profile(_profile(), tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoothing_and_grid():
    assert smooth([0, 3, 0], 3) == [1.5, 1.0, 1.5]
    grid = default_grid(1000, 20)
    assert len(grid) == 20 and grid[0] >= 0 and grid[-1] < 1000
