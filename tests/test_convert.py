"""`spare convert`: pickled weights become safetensors, read only with PyTorch's safe loader."""

import collections
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from spare_core import ConversionError, convert_to_safetensors
from spare_core.cli import main


def _weights() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"head.weight": torch.randn(3, 4, generator=gen), "head.bias": torch.randn(3, generator=gen)}


def test_a_plain_state_dict_converts_exactly(tmp_path):
    weights = _weights()
    torch.save(weights, tmp_path / "clf.pth")
    summary = convert_to_safetensors(tmp_path / "clf.pth", tmp_path / "clf.safetensors")
    loaded = load_file(tmp_path / "clf.safetensors")
    assert set(loaded) == set(weights)
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert summary["tensors"] == 2 and summary["parameters"] == 15
    with safe_open(tmp_path / "clf.safetensors", "pt") as f:
        assert f.metadata()["converted_from"] == "clf.pth"


def test_nested_and_data_parallel_state_dicts_are_unwrapped(tmp_path):
    weights = _weights()
    wrapped = collections.OrderedDict((f"module.{k}", v) for k, v in weights.items())
    torch.save({"epoch": 7, "state_dict": wrapped, "best_acc": 0.98}, tmp_path / "ckpt.pth")
    convert_to_safetensors(tmp_path / "ckpt.pth", tmp_path / "out.safetensors")
    loaded = load_file(tmp_path / "out.safetensors")
    assert set(loaded) == {"head.weight", "head.bias"}
    assert torch.equal(loaded["head.bias"], weights["head.bias"])


def test_tensors_sharing_storage_are_copied_apart(tmp_path):
    shared = torch.arange(6.0)
    torch.save({"a": shared, "b": shared[:3], "c": shared.view(2, 3)}, tmp_path / "tied.pt")
    convert_to_safetensors(tmp_path / "tied.pt", tmp_path / "tied.safetensors")
    loaded = load_file(tmp_path / "tied.safetensors")
    assert torch.equal(loaded["b"], torch.arange(3.0)) and loaded["c"].shape == (2, 3)


class _Payload:
    """Unpickling this would call ``exec``: the safe loader must refuse it without running it."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_a_pickle_that_runs_code_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"weight": _Payload()}, f)
    with pytest.raises(ConversionError, match="holds more than weights"):
        convert_to_safetensors(tmp_path / "evil.pth", tmp_path / "evil.safetensors")
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "evil.safetensors").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [({"epoch": 3, "note": "no tensors"}, "found no tensors"), ([1, 2, 3], "holds a list")],
)
def test_files_without_a_state_dict_are_refused(tmp_path, content, message):
    torch.save(content, tmp_path / "x.pth")
    with pytest.raises(ConversionError, match=message):
        convert_to_safetensors(tmp_path / "x.pth", tmp_path / "x.safetensors")


def test_the_command_converts_and_refuses_to_overwrite(tmp_path, capsys):
    torch.save(_weights(), tmp_path / "clf.pth")
    assert main(["convert", str(tmp_path / "clf.pth")]) == 0
    assert "2 tensors" in capsys.readouterr().out
    assert set(load_file(tmp_path / "clf.safetensors")) == {"head.weight", "head.bias"}
    assert main(["convert", str(tmp_path / "clf.pth")]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "clf.pth"), "--out", str(tmp_path / "clf.bin")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
