"""The LoRA in memory: deterministic bytes, read from a path, bytes or tensors, broken weights refused; previews."""

import hashlib
import subprocess
import sys

import pytest
import torch

from spare_core import (
    ConceptPair,
    ErasureConfig,
    Lora,
    LoraFileError,
    SparseLoRA,
    generate_images,
    grid_image,
    lora_from_adapter,
    preview,
    read_lora,
)

MODULES = [
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v",
]
CONFIG = ErasureConfig(concepts=[ConceptPair("red", "plain")])


def _adapter(backend, scale=0.2) -> SparseLoRA:
    adapter = SparseLoRA(backend.denoiser(), MODULES, rank=2, alpha=2.0, seed=3)
    with torch.no_grad():
        for b in adapter.branches:
            b.up.normal_(0, scale, generator=torch.Generator().manual_seed(4))
    return adapter


def test_same_lora_same_bytes_in_every_process(toy_backend, tmp_path):
    lora = lora_from_adapter(_adapter(toy_backend), toy_backend, CONFIG)
    path = lora.write(tmp_path / "a.safetensors")
    assert path.read_bytes() == lora.to_bytes()
    # The safetensors library writes metadata in hash-map order, which differs between processes;
    # the bytes must not.
    code = (
        "import hashlib; from spare_core import read_lora; "
        f"print(hashlib.sha256(read_lora(r'{path}').to_bytes()).hexdigest())"
    )
    digests = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(2)
    }
    assert digests == {hashlib.sha256(lora.to_bytes()).hexdigest()}


def test_the_file_is_a_kohya_lora_that_safetensors_reads(toy_backend, tmp_path):
    from safetensors import safe_open

    lora = lora_from_adapter(_adapter(toy_backend), toy_backend, CONFIG)
    path = lora.write(tmp_path / "a.safetensors")
    with safe_open(str(path), "pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
        up = f.get_tensor("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight")
    assert keys == {
        f"lora_unet_{m.replace('.', '_')}.{part}"
        for m in MODULES
        for part in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    assert up.dtype == torch.float16
    assert metadata["ss_network_module"] == "networks.lora" and metadata["spare_arch"] == "toy"
    assert ErasureConfig.from_json(metadata["spare_config"]) == CONFIG
    assert "seconds" not in " ".join(metadata)  # timings belong in the run's report, not in the file


def test_read_from_path_bytes_and_tensors_agree(toy_backend, tmp_path):
    lora = lora_from_adapter(_adapter(toy_backend), toy_backend, CONFIG)
    path = lora.write(tmp_path / "a.safetensors")
    for other in (read_lora(path), read_lora(path.read_bytes()), read_lora(lora.tensors, lora.metadata)):
        assert other.to_bytes() == lora.to_bytes()
        assert other.describe()["modules"] == lora.describe()["modules"]
    info = lora.describe()
    assert info["concepts"] == [["red", "plain"]] and info["settings"]["steps"] == CONFIG.steps
    assert info["arch"] == "toy" and len(info["modules"]) == 2 and info["modules"][0]["down"] == [2, 64]


def test_broken_weights_are_never_written_and_never_read(toy_backend, tmp_path):
    adapter = _adapter(toy_backend)
    with torch.no_grad():
        adapter.branches[0].up[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        lora_from_adapter(adapter, toy_backend, CONFIG)
    good = lora_from_adapter(_adapter(toy_backend), toy_backend, CONFIG)
    tensors = dict(good.tensors)
    key = next(k for k in tensors if k.endswith("lora_down.weight"))
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] = float("inf")
    broken = Lora(tensors, good.metadata, source="broken.safetensors")
    with pytest.raises(LoraFileError, match="NaN or infinite"):
        broken.write(tmp_path / "broken.safetensors")
    assert list(tmp_path.iterdir()) == []
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "broken.safetensors"), metadata=good.metadata)
    with pytest.raises(LoraFileError, match="NaN or infinite"):
        read_lora(tmp_path / "broken.safetensors")


def test_bytes_that_are_not_safetensors_are_refused():
    with pytest.raises(LoraFileError, match="not a safetensors file"):
        read_lora(b"\x80\x04 pickled data")


def test_preview_at_strength_zero_equals_before_and_a_lora_equals_its_adapter(toy_backend):
    adapter = _adapter(toy_backend, scale=0.5)
    lora = lora_from_adapter(adapter, toy_backend, CONFIG, dtype=torch.float32)
    prompts, seeds = ["a circle image in red style"], [11, 12]
    off = preview(toy_backend, prompts, seeds, lora, strength=0.0, steps=4)
    assert torch.equal(off.before, off.after)
    on = preview(toy_backend, prompts, seeds, lora, strength=1.0, steps=4)
    assert torch.equal(on.before, off.before)
    assert (on.after - on.before).abs().mean() > 1e-3
    with adapter.applied(1.0):
        direct = toy_backend.sample(prompts * 2, seeds, 4, 5.0)
    assert torch.allclose(on.after, direct, atol=1e-5)
    half = generate_images(toy_backend, prompts, seeds, lora, strength=0.5, steps=4)
    assert not torch.allclose(half, on.after) and not torch.allclose(half, on.before)
    gallery = on.images("after")
    assert len(gallery) == 2 and gallery[0].size == (32, 32)
    assert on.images("before")[1].tobytes() == off.images("after")[1].tobytes()
    grid = on.grid()
    assert grid.height >= 2 * 128 and grid.width >= 2 * 128  # 32 px images drawn at 128 px cells


def test_grid_cells_are_sized_from_the_images():
    big = torch.zeros(4, 3, 512, 512)
    grid = grid_image(big, ["a", "b"], ["seed 1", "seed 2"])
    assert grid.width >= 2 * 512 and grid.height >= 2 * 512
    assert grid.width < 2 * 512 + 400  # not upscaled
    small = torch.zeros(2, 3, 32, 32)
    assert grid_image(small, ["a"], ["1", "2"]).width >= 2 * 128
