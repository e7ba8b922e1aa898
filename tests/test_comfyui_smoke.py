"""Against a real ComfyUI checkout: the pack loads without an import failure.

Runs only when ``COMFYUI_PATH`` names a ComfyUI folder whose Python
environment is this one or ``COMFYUI_PYTHON`` (ComfyUI's own requirements
installed); it is the one test allowed to skip in CI, where no ComfyUI is
installed. It links this repository into ``custom_nodes/`` under a temporary
name, starts ComfyUI with ``--cpu --quick-test-for-ci`` (ComfyUI loads every
custom node, then exits), and reads ComfyUI's own import report.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.comfyui_smoke
def test_the_pack_loads_in_a_real_comfyui():
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to run this smoke test")
    comfyui = Path(comfyui)
    assert (comfyui / "main.py").is_file(), f"{comfyui} is not a ComfyUI checkout (no main.py)"
    link = comfyui / "custom_nodes" / f"spare_smoke_{uuid.uuid4().hex[:6]}"
    link.symlink_to(ROOT, target_is_directory=True)
    try:
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        run = subprocess.run(
            [python, "main.py", "--cpu", "--quick-test-for-ci"],
            cwd=comfyui,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        link.unlink()
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    ours = [line for line in log.splitlines() if link.name in line]
    assert ours, f"ComfyUI did not report loading {link.name}:\n{log[-3000:]}"
    assert not any("IMPORT FAILED" in line or "comfy_entrypoint" in line for line in ours), "\n".join(ours)


def test_an_old_comfyui_gets_one_clear_line():
    code = (
        "import asyncio, importlib.util, logging, sys\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        f"spec = importlib.util.spec_from_file_location('pack', r'{ROOT / '__init__.py'}', "
        f"submodule_search_locations=[r'{ROOT}'])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; spec.loader.exec_module(m)\n"
        "print(asyncio.run(m.comfy_entrypoint()))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "None"
    (line,) = [line for line in run.stderr.splitlines() if "SPARE" in line]
    assert "ComfyUI 0.3.64 or newer" in line
