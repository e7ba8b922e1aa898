"""The plain-torch ViT reads timm's key names and computes what a standard pre-norm transformer computes."""

import pytest
import torch
import torch.nn as nn

from spare_core.evaluation.vit import ViTClassifier, ViTConfig

TINY = ViTConfig(image_size=32, patch_size=8, dim=64, depth=2, heads=4, mlp_dim=128, num_classes=5)

#: timm's VisionTransformer names for a 2-block model (timm/models/vision_transformer.py), written by hand.
TIMM_KEYS = {
    "cls_token",
    "pos_embed",
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
    "norm.weight",
    "norm.bias",
    "head.weight",
    "head.bias",
    *(
        f"blocks.{i}.{name}"
        for i in range(2)
        for name in (
            "norm1.weight",
            "norm1.bias",
            "attn.qkv.weight",
            "attn.qkv.bias",
            "attn.proj.weight",
            "attn.proj.bias",
            "norm2.weight",
            "norm2.bias",
            "mlp.fc1.weight",
            "mlp.fc1.bias",
            "mlp.fc2.weight",
            "mlp.fc2.bias",
        )
    ),
}


def _random_model(seed: int = 0) -> ViTClassifier:
    torch.manual_seed(seed)
    model = ViTClassifier(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():  # non-trivial norms and biases too
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_parameter_names_and_shapes_are_timms():
    model = _random_model()
    state = model.state_dict()
    assert set(state) == TIMM_KEYS
    assert state["pos_embed"].shape == (1, (32 // 8) ** 2 + 1, 64)
    assert state["blocks.0.attn.qkv.weight"].shape == (3 * 64, 64)
    assert state["patch_embed.proj.weight"].shape == (64, 3, 8, 8)
    large = ViTConfig.large_16(num_classes=51)
    assert (large.dim, large.depth, large.heads, large.mlp_dim, large.image_size) == (1024, 24, 16, 4096, 224)


def test_forward_equals_torchs_own_pre_norm_transformer():
    model = _random_model()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    reference_layers = []
    for block in model.blocks:
        layer = nn.TransformerEncoderLayer(
            64, 4, 128, dropout=0.0, activation="gelu", layer_norm_eps=1e-6, batch_first=True, norm_first=True
        )
        with torch.no_grad():
            layer.self_attn.in_proj_weight.copy_(block.attn.qkv.weight)
            layer.self_attn.in_proj_bias.copy_(block.attn.qkv.bias)
            layer.self_attn.out_proj.weight.copy_(block.attn.proj.weight)
            layer.self_attn.out_proj.bias.copy_(block.attn.proj.bias)
            layer.linear1.load_state_dict(block.mlp.fc1.state_dict())
            layer.linear2.load_state_dict(block.mlp.fc2.state_dict())
            layer.norm1.load_state_dict(block.norm1.state_dict())
            layer.norm2.load_state_dict(block.norm2.state_dict())
        reference_layers.append(layer.eval())
    with torch.no_grad():
        tokens = nn.functional.conv2d(images, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=8)
        tokens = tokens.flatten(2).transpose(1, 2)
        x = torch.cat([model.cls_token.expand(3, -1, -1), tokens], 1) + model.pos_embed
        for layer in reference_layers:
            x = layer(x)
        expected = nn.functional.linear(
            nn.functional.layer_norm(x, (64,), model.norm.weight, model.norm.bias, 1e-6)[:, 0],
            model.head.weight,
            model.head.bias,
        )
        assert torch.allclose(model(images), expected, atol=1e-5)


def test_a_state_dict_sizes_its_model():
    state = _random_model().state_dict()
    loaded = ViTClassifier.from_state_dict(state, heads=4)
    assert loaded.config == TINY
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), _random_model()(images))
    # Without a head count, heads are 64 wide, as in timm's ViT-S/B/L.
    assert ViTClassifier.from_state_dict(state).config.heads == 1


def test_wrong_inputs_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="not a timm ViT state dict"):
        ViTClassifier.from_state_dict({"head.weight": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="takes 32 x 32 images"):
        _random_model()(torch.zeros(1, 3, 64, 64))
