"""Files are written under a temporary name and renamed: never half-written."""

import os

import pytest
import torch
from safetensors.torch import load_file

from spare_core.fileio import save_safetensors, write_json


def test_save_safetensors_round_trip_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "w.safetensors"
    save_safetensors({"a": torch.arange(4.0)}, path, metadata={"k": "v"})
    assert torch.equal(load_file(path)["a"], torch.arange(4.0))
    assert os.listdir(path.parent) == ["w.safetensors"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert path.read_text().strip().startswith("{")
    assert '"ok": 1' in path.read_text()
    assert os.listdir(tmp_path) == ["report.json"]
