"""The sparse LoRA adapter: never edits the base model, exports exactly, trains under inference mode."""

import pytest
import torch
from diffusers import UNet2DConditionModel
from torch import nn

from spare_core.adapter import SparseLoRA, normal_weights
from spare_core.lora_file import lora_delta

TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(8, 16),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=8,
    attention_head_dim=4,
    norm_num_groups=4,
)
TARGETS = [
    "conv_in",
    "time_embedding.linear_1",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v",
]


def _unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET)
    unet.requires_grad_(False)
    return unet


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 5, 8, generator=g)


def _randomise(adapter: SparseLoRA) -> None:
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.normal_(0, 0.1)


def test_adapter_starts_as_identity_and_detaching_restores_exact_outputs():
    unet = _unet()
    x, t, c = _inputs()
    base = unet(x, t, c).sample
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    adapter = SparseLoRA(unet, TARGETS, rank=2, alpha=2.0).attach()
    assert torch.equal(unet(x, t, c).sample, base)  # up starts at zero
    _randomise(adapter)
    changed = unet(x, t, c).sample
    assert (changed - base).abs().max() > 1e-3
    adapter.detach()
    assert torch.equal(unet(x, t, c).sample, base)
    for k, v in unet.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_exported_lora_equals_the_hooks_for_linear_and_conv():
    unet = _unet()
    x, t, c = _inputs()
    masks = {TARGETS[2]: (torch.arange(8) % 2).float()}
    adapter = SparseLoRA(unet, TARGETS, rank=2, alpha=3.0, row_masks=masks)
    _randomise(adapter)
    with adapter.applied():
        hooked = unet(x, t, c).sample
    exported = adapter.export()
    # The row mask is folded into `up`: masked rows carry no update, and the rank stays 2.
    assert torch.all(exported[TARGETS[2]].up[::2] == 0)
    assert torch.linalg.matrix_rank(lora_delta(exported[TARGETS[2]])) <= 2
    modules = dict(unet.named_modules())
    with torch.no_grad():
        for name, weights in exported.items():
            modules[name].weight += lora_delta(weights)
    merged = unet(x, t, c).sample
    assert torch.allclose(merged, hooked, atol=1e-5)


def test_strength_scales_the_update():
    unet = _unet()
    x, t, c = _inputs()
    base = unet(x, t, c).sample
    adapter = SparseLoRA(unet, TARGETS[2:], rank=2, alpha=2.0)
    _randomise(adapter)
    with adapter.applied(1.0):
        full = unet(x, t, c).sample
    with adapter.applied(0.5):
        half = unet(x, t, c).sample
    # The k/v update enters attention non-linearly, so compare against zero and full only roughly.
    assert (half - base).abs().mean() < (full - base).abs().mean()
    with adapter.applied(0.0):
        assert torch.equal(unet(x, t, c).sample, base)


def test_bad_targets_and_rank_are_refused():
    unet = _unet()
    with pytest.raises(ValueError, match="no module named"):
        SparseLoRA(unet, ["down_blocks.9.nothing"])
    with pytest.raises(ValueError, match="rank must be at least 1"):
        SparseLoRA(unet, TARGETS, rank=0)
    with pytest.raises(TypeError, match="Linear or Conv2d"):
        SparseLoRA(unet, ["down_blocks.0.attentions.0.norm"])


def test_training_works_on_weights_and_inputs_made_under_inference_mode():
    # This is how ComfyUI hands over models: everything created under inference_mode.
    with torch.inference_mode():
        unet = _unet()
        x, t, c = _inputs()
        target = torch.randn(2, 4, 8, 8)
    original = {name: p for name, p in unet.named_parameters()}
    assert all(p.is_inference() for p in original.values())
    adapter = SparseLoRA(unet, TARGETS, rank=2, alpha=2.0)
    opt = torch.optim.SGD(adapter.trainable_parameters(), lr=0.1)
    losses = []
    with torch.inference_mode(False), normal_weights(unet), adapter.applied():
        for _ in range(3):
            loss = (unet(x, t, c).sample - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert all(b.up.abs().sum() > 0 for b in adapter.branches)  # every branch got gradients
    assert losses[-1] < losses[0]
    # The model holds its original (inference) weights again, untouched.
    for name, p in unet.named_parameters():
        assert p is original[name]


def test_normal_weights_leaves_ordinary_models_alone():
    model = nn.Linear(3, 3)
    weight = model.weight
    with normal_weights(model):
        assert model.weight is weight
