"""The repository works as a ComfyUI node pack and as a plain Python project."""

import importlib.util
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_as_package(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def test_root_init_imports_outside_comfyui_under_any_folder_name():
    # ComfyUI imports the pack under the clone folder's name, which we do not know.
    module = _load_as_package(f"clone_{uuid.uuid4().hex[:8]}")
    # ComfyUI's loader takes NODE_CLASS_MAPPINGS first and would then never call the V3 entry point.
    assert not hasattr(module, "NODE_CLASS_MAPPINGS")
    assert callable(module.comfy_entrypoint)
    assert (ROOT / module.WEB_DIRECTORY).is_dir()


def test_root_init_and_engine_import_without_comfy_in_a_fresh_interpreter():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('pack', r'{ROOT / '__init__.py'}', "
        f"submodule_search_locations=[r'{ROOT}'])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; spec.loader.exec_module(m)\n"
        "import spare_core.toy.pipeline, spare_core.cli\n"
        "bad = [k for k in sys.modules if k.split('.')[0] in ('comfy', 'gradio', 'modules', 'folder_paths')]\n"
        "assert not bad, bad\n"
        "print(len(m.__all__))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().isdigit()


def test_installer_never_installs_torch_and_skips_what_is_installed(tmp_path):
    spec = importlib.util.spec_from_file_location("spare_install", ROOT / "install.py")
    installer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installer)
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\ntorch>=99\nnumpy>=1.0\nno-such-package-spare-test>=1.0  # missing\n")
    assert installer.missing_requirements(req) == ["no-such-package-spare-test>=1.0"]


def test_requirements_and_pyproject_leave_torch_to_the_host():
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    base = pyproject["project"]["dependencies"]
    assert not [d for d in base if d.lower().startswith("torch")]
    assert any(d.startswith("torch") for d in pyproject["project"]["optional-dependencies"]["standalone"])
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert not [line for line in lines if line.lower().startswith("torch")]
    # Both lists name the same packages with the same minimum versions.
    assert sorted(line for line in lines if line) == sorted(base)
    assert "tool" in pyproject and "comfy" in pyproject["tool"]
