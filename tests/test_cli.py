"""The spare command: one clear line and exit status 2 for each bad input, and no output file."""

import argparse

import pytest
import torch

from spare_core.cli import build_parser, main


def _run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "/no/such/model"], "not found"),
        (["--concept", "", "--surrogate", "plain"], "concept is empty"),
        (["--concept", "red", "--surrogate", "red"], "both 'red'"),
        (["--concept", "red", "--surrogate", "plain", "--rank", "0"], "rank must be 1 to 256, got 0"),
        (["--concept", "red", "--surrogate", "plain", "--steps", "0"], "steps must be 1 to 100000"),
        (
            ["--concept", "red", "--concept", "blue", "--surrogate", "a", "--surrogate", "b", "--surrogate", "c"],
            "2 concepts but 3 surrogates",
        ),
        (["--concept", "red", "--surrogate", "plain", "--top-k", "0"], "give top_k or module_fraction"),
        (["--concept", "red", "--surrogate", "plain", "--channel-fraction", "1.5"], "channel_fraction must be"),
        (["--concept", "red", "--surrogate", "plain", "--surrogate-images-per-prompt", "-1"], "0 to 64, got -1"),
        (["--concept", "red", "--surrogate", "plain", "--lr", "nan"], "lr must be a finite number"),
        (["--concept", "red", "--surrogate", "plain", "--lr", "0"], "lr must be"),
        (["--concept", "red", "--surrogate", "plain", "--steps", "abc"], "invalid int value"),
        (["--concept", "red", "--surrogate", "plain", "--scope", "everything"], "invalid choice"),
        (["--concept", "red"], "no --surrogate given"),
    ],
)
def test_erase_rejects_bad_input_without_writing(capsys, tmp_path, argv, message):
    out = tmp_path / "out.safetensors"
    if argv[0] == "--model":
        argv = argv + ["--concept", "red", "--surrogate", "plain"]
    code, err = _run(capsys, "erase", *argv, "--out", str(out))
    assert code == 2
    assert message in err
    assert err.count("\n") == 1  # one line
    assert list(tmp_path.iterdir()) == []


def test_wrong_output_suffix_is_refused(capsys, tmp_path):
    code, err = _run(capsys, "erase", "--concept", "red", "--surrogate", "plain", "--out", str(tmp_path / "x.pt"))
    assert code == 2 and "should end in .safetensors" in err


def test_inspect_refuses_a_file_that_is_not_safetensors(capsys, tmp_path):
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"\x80\x04 pickled data")
    code, err = _run(capsys, "inspect", str(bad))
    assert code == 2 and "not a readable safetensors file" in err


def test_generate_refuses_a_lora_for_another_architecture(capsys, tmp_path):
    from spare_core.lora_file import LoraModuleWeights, save_lora_file

    lora = tmp_path / "sd1.safetensors"
    weights = {"conv_in": LoraModuleWeights(torch.zeros(2, 12, 3, 3), torch.zeros(32, 2, 1, 1), 2.0)}
    from spare_core.toy.model import UNET_CONFIG

    save_lora_file(lora, weights, UNET_CONFIG, "sd1", {})
    out = tmp_path / "g.png"
    code, err = _run(capsys, "generate", "--prompt", "a star", "--lora", str(lora), "--out", str(out))
    assert code == 2 and "Stable Diffusion 1.x" in err
    assert not out.exists()


def test_generate_refuses_a_file_that_is_not_a_lora(capsys, tmp_path):
    from safetensors.torch import save_file

    not_lora = tmp_path / "weights.safetensors"
    save_file({"model.weight": torch.zeros(2, 2)}, str(not_lora))
    code, err = _run(
        capsys, "generate", "--prompt", "a star", "--lora", str(not_lora), "--out", str(tmp_path / "g.png")
    )
    assert code == 2 and "LoRA" in err


def test_unknown_toy_concept_is_explained(capsys, tmp_path):
    code, err = _run(
        capsys, "erase", "--concept", "dragon", "--surrogate", "plain", "--out", str(tmp_path / "d.safetensors")
    )
    assert code == 2 and "not a toy concept" in err and "circle" in err


def test_every_option_of_every_command_is_explained():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"profile", "saliency", "erase", "generate", "inspect", "demo"} <= set(subparsers.choices)
    for name, sub in subparsers.choices.items():
        assert sub.description, name
        for action in sub._actions:
            if action.dest != "help":
                assert action.help and len(action.help) > 5, f"spare {name} {action.option_strings}"
    for name in ("profile", "saliency", "erase", "generate"):
        options = {s for a in subparsers.choices[name]._actions for s in a.option_strings}
        assert {"--device", "--dtype", "--model"} <= options, name


def test_eval_attacks_are_named_all_or_none_never_left_empty(capsys, tmp_path):
    from spare_core.cli import ATTACK_CHOICES, _attacks
    from spare_core.toy.harness import ATTACKS

    assert ATTACK_CHOICES == ATTACKS  # the command line offers exactly the harness's attacks
    assert _attacks(["all"]) == list(ATTACKS)
    assert _attacks(["none"]) == []
    assert _attacks(["inversion", "neighbours", "inversion"]) == ["inversion", "neighbours"]
    edit = tmp_path / "edit.safetensors"
    edit.write_bytes(b"")
    # A bare --attacks once meant "no attacks" silently; now it is refused, as is "none" beside an attack.
    for argv, message in (([], "expected at least one argument"), (["all", "none"], "give 'all' or 'none' alone")):
        code, err = _run(capsys, "eval", str(edit), "--out", str(tmp_path / "eval"), "--attacks", *argv)
        assert code == 2 and message in err
    assert not (tmp_path / "eval").exists()
