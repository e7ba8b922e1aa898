"""The toy model's space-to-depth first stage is exact and pipeline-compatible."""

import torch

from spare_core.toy.vae import PixelShuffleVAE


def test_round_trip_is_exact():
    vae = PixelShuffleVAE()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = vae.encode(x).latent_dist.sample()
    assert z.shape == (2, 12, 16, 16)
    assert torch.equal(vae.decode(z).sample, x)


def test_pipeline_scale_factor_is_two():
    vae = PixelShuffleVAE()
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 2
    assert vae.config.scaling_factor == 1.0
    assert vae.dtype == torch.float32
