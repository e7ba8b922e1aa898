"""FID: the Fréchet distance against its closed forms, the Inception network's layout, and FID in the
UnlearnCanvas runner (in miniature, with random Inception weights)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from spare_core.evaluation.fid import FeatureStatistics, InceptionFeatures, frechet_distance
from spare_core.evaluation.unlearncanvas import Protocol


def _random_psd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(n, dtype=torch.float64)


def test_the_frechet_distance_of_two_by_two_gaussians_matches_its_closed_form():
    # For a 2 x 2 matrix M with non-negative eigenvalues, Tr M^(1/2) = sqrt(Tr M + 2 sqrt(det M)).
    s1, s2 = _random_psd(2, 0), _random_psd(2, 1)
    mu1, mu2 = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([2.0, 0.25], dtype=torch.float64)
    m = s1 @ s2
    trace_root = math.sqrt(m.trace().item() + 2 * math.sqrt(torch.det(m).item()))
    expected = (mu1 - mu2).pow(2).sum().item() + s1.trace().item() + s2.trace().item() - 2 * trace_root
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_gaussians_with_shared_axes_give_the_sum_of_squared_root_differences():
    q, _ = torch.linalg.qr(_random_psd(6, 2))
    a, b = torch.rand(6, dtype=torch.float64) + 0.1, torch.rand(6, dtype=torch.float64) + 0.1
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    mu = torch.zeros(6, dtype=torch.float64)
    expected = (a.sqrt() - b.sqrt()).pow(2).sum().item()
    assert frechet_distance(mu, s1, mu + 1, s2) == pytest.approx(expected + 6, rel=1e-8)
    assert frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-9)


def test_running_statistics_equal_the_sample_mean_and_covariance():
    x = torch.randn(50, 4, dtype=torch.float64)
    stats = FeatureStatistics(4)
    stats.add(x[:17])
    stats.add(x[17:])
    mean, cov = stats.mean_and_covariance()
    assert torch.allclose(mean, x.mean(0)) and torch.allclose(cov, torch.cov(x.T))
    with pytest.raises(ValueError, match="at least 2 images"):
        FeatureStatistics(4).mean_and_covariance()


def test_the_inception_network_reads_pytorch_fids_names_and_gives_2048_features():
    model = InceptionFeatures()
    state = model.state_dict()
    # Shapes of the published network (torchvision's Inception-v3 layout).
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert state["Mixed_6e.branch7x7_1.conv.weight"].shape == (192, 768, 1, 1)
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert sum(v.numel() for k, v in state.items() if "num_batches" not in k) > 21_000_000

    tensors = {k: v for k, v in state.items() if "num_batches" not in k}
    tensors["fc.weight"], tensors["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # the head is ignored
    loaded = InceptionFeatures.from_state_dict(tensors)
    assert loaded(torch.rand(2, 3, 40, 40)).shape == (2, 2048)
    del tensors["Mixed_6a.branch3x3.bn.running_var"]
    with pytest.raises(ValueError, match="Mixed_6a.branch3x3.bn.running_var"):
        InceptionFeatures.from_state_dict(tensors)


def _random_inception(path) -> None:
    """Random weights that keep activations at unit scale through the network (He initialisation)."""
    torch.manual_seed(0)
    model = InceptionFeatures()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def test_unlearncanvas_reports_fid_to_the_unedited_model(toy_backend, tmp_path):
    from test_unlearncanvas import _tiny_classifier

    from spare_core import WeightDelta, evaluate_unlearncanvas

    mini = Protocol(styles=("Van_Gogh", "Seed_Images", "Monet"), objects=("Cats", "Dogs"), seeds=(1, 2), steps=3,
                    guidance=3.0, image_size=32, classifier_size=16)  # fmt: skip
    _tiny_classifier(tmp_path / "style.safetensors", 3, 0)
    _tiny_classifier(tmp_path / "object.safetensors", 2, 1)
    _random_inception(tmp_path / "inception.safetensors")
    unchanged = WeightDelta(toy_backend.denoiser(), ["conv_in"])
    changed = WeightDelta(toy_backend.denoiser(), ["conv_in"])
    weight = toy_backend.denoiser().get_submodule("conv_in").weight
    changed.set_delta("conv_in", torch.randn_like(weight) * weight.std() * 3)
    result = evaluate_unlearncanvas(
        toy_backend, [(unchanged, "Van Gogh"), (changed, "Van Gogh")],
        tmp_path / "style.safetensors", tmp_path / "object.safetensors", mini,
        inception_path=tmp_path / "inception.safetensors",
    )  # fmt: skip
    same, different = (run["fid"] for run in result["runs"])
    assert same == pytest.approx(0.0, abs=1e-3)  # the same images as the reference
    assert different > 1.0
    assert result["averages"]["style"]["fid"] == pytest.approx((same + different) / 2, abs=1e-3)
    assert result["protocol"]["fid_reference"] == "unedited model"


def test_spare_eval_unlearncanvas_checks_the_fid_options(tmp_path, capsys):
    from spare_core.cli import main

    files = {}
    for name in ("edit", "model", "style", "object"):
        files[name] = tmp_path / f"{name}.safetensors"
        files[name].write_bytes(b"")
    common = ["eval", "--protocol", "unlearncanvas", "--model", str(files["model"]), "--style-classifier",
              str(files["style"]), "--object-classifier", str(files["object"]), str(files["edit"])]  # fmt: skip
    assert main([*common, "--inception", str(tmp_path / "missing.safetensors")]) == 2
    assert "spare convert" in capsys.readouterr().err
    assert main([*common, "--fid-reference", str(tmp_path)]) == 2
    assert "needs --inception" in capsys.readouterr().err
