"""The spare command on real (tiny) erasures: same settings, same selection and same bytes as the API."""

import json

import pytest
from tiny import TINY_ARGV as TINY
from tiny import tiny_config as _tiny_config

from spare_core import SETTINGS, ErasureConfig, build_lora, erase, read_lora
from spare_core.cli import main

CONCEPT = ["--concept", "yellow", "--surrogate", "plain"]


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_and_api_write_the_same_bytes_and_stages_can_be_reused(toy_backend, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    code, _, err = _run(capsys, "erase", *CONCEPT, *TINY, "--out", out, "--cache-dir", tmp_path / "cache")
    assert code == 0, err
    result = erase(toy_backend, _tiny_config())
    assert out.read_bytes() == build_lora(result, toy_backend).to_bytes()

    # `spare saliency` selects exactly the modules erase trains, for the same settings.
    code, _, err = _run(
        capsys, "saliency", *CONCEPT, *TINY, "--out", tmp_path / "s.json", "--cache-dir", tmp_path / "cache"
    )
    assert code == 0, err
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["selected"] == result.selected_modules

    # Re-using the saved profile and saliency gives the same file.
    code, _, err = _run(
        capsys, "profile", *CONCEPT, *TINY, "--out", tmp_path / "p.json", "--cache-dir", tmp_path / "cache"
    )
    assert code == 0, err
    again = tmp_path / "again.safetensors"
    code, _, err = _run(
        capsys, "erase", *CONCEPT, *TINY, "--out", again, "--cache-dir", tmp_path / "cache",
        "--profile", tmp_path / "p.json", "--saliency", tmp_path / "s.json",
    )  # fmt: skip
    assert code == 0, err
    assert again.read_bytes() == out.read_bytes()

    # A saliency made with other selection settings is refused, before any work.
    other = tmp_path / "other.safetensors"
    code, _, err = _run(
        capsys, "erase", *CONCEPT, *TINY, "--top-k", "3", "--out", other, "--saliency", tmp_path / "s.json"
    )
    assert code == 2 and f"top_k={ErasureConfig([]).top_k}" in err and err.count("\n") == 1
    assert not other.exists()

    # --from re-runs the stored erasure; flags override it and are recorded.
    rerun = tmp_path / "rerun.safetensors"
    code, _, err = _run(
        capsys, "erase", "--from", out, "--steps", "2", "--out", rerun, "--cache-dir", tmp_path / "cache"
    )
    assert code == 0, err
    stored = read_lora(rerun)
    assert stored.config().steps == 2 and stored.config().retain_images == 8
    assert json.loads(stored.metadata["spare_overrides"]) == {"steps": 2}


def test_from_with_overrides_in_a_dry_run(tmp_path, capsys, toy_backend):
    from spare_core import SparseLoRA, lora_from_adapter

    adapter = SparseLoRA(toy_backend.denoiser(), ["conv_in"], rank=1, alpha=1.0)
    stored = tmp_path / "stored.safetensors"
    lora_from_adapter(adapter, toy_backend, _tiny_config(rank=1, eta=0.5)).write(stored)
    code, out, err = _run(
        capsys, "erase", "--from", stored, "--eta", "2", "--out", tmp_path / "x.safetensors", "--dry-run"
    )
    assert code == 0, err
    resolved = json.loads(out)
    assert resolved["settings"]["eta"] == 2.0 and resolved["settings"]["rank"] == 1
    assert resolved["overrides"] == {"eta": 2.0}
    code, _, err = _run(capsys, "erase", "--from", stored, *CONCEPT, "--out", tmp_path / "x.safetensors")
    assert code == 2 and "do not combine" in err


def _non_default(setting):
    if setting.kind == "bool":
        return [f"--no-{setting.option[2:]}"] if setting.default else [setting.option], (not setting.default)
    if setting.kind == "list":
        return [setting.option, "a yellow circle", setting.option, "yellow style"], ["a yellow circle", "yellow style"]
    if setting.kind == "choice":
        value = next(c for c in setting.choices if c != setting.default)
        return [setting.option, value], value
    if setting.kind == "str":
        return [setting.option, "{folder}"], "{folder}"
    if setting.kind == "int":
        value = int(setting.default) + 1
        return [setting.option, str(value)], value
    value = round((setting.default + (setting.maximum if setting.maximum is not None else setting.default + 1)) / 2, 3)
    return [setting.option, str(value)], value


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_reachable_under_its_own_name(setting, tmp_path, capsys):
    argv, value = _non_default(setting)
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(folder / "a.png")
    argv = [str(folder) if a == "{folder}" else a for a in argv]
    value = str(folder) if value == "{folder}" else value
    if setting.name == "top_k":
        argv += ["--module-fraction", "0.5"]
    code, out, err = _run(capsys, "erase", *CONCEPT, *argv, "--out", tmp_path / "x.safetensors", "--dry-run")
    assert code == 0, err
    assert json.loads(out)["settings"][setting.name] == value
    assert f"{setting.option} " in main_help(capsys)


def main_help(capsys) -> str:
    main(["erase", "--help"])
    return capsys.readouterr().out


def test_a_diverging_run_stops_with_advice_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "nan.safetensors"
    code, _, err = _run(capsys, "erase", *CONCEPT, *TINY, "--steps", "30", "--lr", "1e4", "--out", out)
    assert code == 2, err
    last = err.strip().splitlines()[-1]  # after the progress bars, the error on one line
    assert last.startswith("spare erase: error: training diverged") and "lower the learning rate" in last
    assert list(tmp_path.iterdir()) == []


def test_a_saved_toy_pipeline_folder_gets_one_line(toy_pipe, tmp_path, capsys):
    folder = tmp_path / "toy_saved"
    toy_pipe.save_pretrained(folder)
    capsys.readouterr()  # saving prints its own progress
    code, _, err = _run(capsys, "generate", "--model", folder, "--prompt", "a ring", "--out", tmp_path / "g.png")
    assert code == 2 and "--model toy" in err and err.count("\n") == 1
    assert not (tmp_path / "g.png").exists()


def test_a_librarys_own_error_ends_as_one_line(tmp_path, capsys, monkeypatch):
    import spare_core

    def broken(*args, **kwargs):
        raise OSError("Error no file named diffusion_pytorch_model.safetensors found in directory /x/unet.\nMore text")

    monkeypatch.setattr(spare_core, "open_model", broken)
    code, _, err = _run(capsys, "generate", "--prompt", "a ring", "--out", tmp_path / "g.png")
    assert code == 2 and "diffusion_pytorch_model" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_cancelled_run_keeps_its_checkpoint_at_the_step_reached_and_resumes(tmp_path, capsys, monkeypatch):
    import signal

    from safetensors.torch import load_file

    from spare_core import trainer as trainer_module

    original = trainer_module.SelfDistillationTrainer.train_step

    def interrupted(self):
        if self.step == 4:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C during the fifth step
        return original(self)

    checkpoint, out = tmp_path / "ckpt.safetensors", tmp_path / "y.safetensors"
    argv = [
        "erase",
        *CONCEPT,
        *TINY,
        "--steps",
        "6",
        "--out",
        out,
        "--checkpoint",
        checkpoint,
        "--cache-dir",
        tmp_path / "c",
    ]
    monkeypatch.setattr(trainer_module.SelfDistillationTrainer, "train_step", interrupted)
    code, _, err = _run(capsys, *argv)
    assert code == 130 and "nothing was written" in err
    assert not out.exists()
    assert int(load_file(checkpoint)["step"]) == 5  # the step under way finished; the run stopped before the next
    monkeypatch.undo()
    code, _, err = _run(capsys, *argv)
    assert code == 0, err
    assert not checkpoint.exists()  # the finished run no longer needs it
    straight = tmp_path / "straight.safetensors"
    code, _, err = _run(
        capsys, "erase", *CONCEPT, *TINY, "--steps", "6", "--out", straight, "--cache-dir", tmp_path / "c"
    )
    assert out.read_bytes() == straight.read_bytes()


def test_dry_run_needs_no_output_file(capsys):
    code, out, err = _run(capsys, "erase", *CONCEPT, "--top-k", "5", "--dry-run")
    assert code == 0, err
    assert json.loads(out)["settings"]["top_k"] == 5
