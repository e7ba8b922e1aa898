"""Against a real ComfyUI checkout: the pack loads without an import failure.

Runs only when ``COMFYUI_PATH`` names a ComfyUI folder whose Python
environment is this one or ``COMFYUI_PYTHON`` (ComfyUI's own requirements
installed); it is the one test allowed to skip in CI, where no ComfyUI is
installed. It links this repository into ``custom_nodes/`` under a temporary
name, starts ComfyUI with ``--cpu --quick-test-for-ci`` (ComfyUI loads every
custom node, then exits), and reads ComfyUI's own import report.
"""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What ComfyUI's loader must register: node id -> (display name, output types).
EXPECTED_OUTPUTS = {
    "SPARE_ApplySparseLoRA": ["Apply Sparse LoRA", ["MODEL", "CLIP"]],
    "SPARE_BeforeAfter": ["SPARE Before/After", ["IMAGE"]],
    "SPARE_ComputeSaliency": ["SPARE Compute Saliency", ["SPARE_SALIENCY", "IMAGE"]],
    "SPARE_TimestepProfile": ["SPARE Timestep Profile", ["SPARE_DATA", "SPARE_PROFILE", "IMAGE"]],
    "SPARE_TrainAdapter": ["Train SPARE Adapter", ["MODEL", "SPARE_LORA", "IMAGE"]],
}
NODE_INFO = """
import asyncio, json, sys
sys.argv = ["main.py", "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import nodes
asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
info = {}
for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
    if node_id.startswith("SPARE_"):
        v1 = cls.GET_NODE_INFO_V1()
        info[node_id] = [nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_id), list(v1["output"])]
print(json.dumps(info, sort_keys=True))
"""


@pytest.mark.comfyui_smoke
def test_the_pack_loads_in_a_real_comfyui():
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        pytest.skip("set COMFYUI_PATH to a ComfyUI checkout to run this smoke test")
    comfyui = Path(comfyui)
    assert (comfyui / "main.py").is_file(), f"{comfyui} is not a ComfyUI checkout (no main.py)"
    link = comfyui / "custom_nodes" / f"spare_smoke_{uuid.uuid4().hex[:6]}"
    link.symlink_to(ROOT, target_is_directory=True)
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    try:
        run = subprocess.run(
            [python, "main.py", "--cpu", "--quick-test-for-ci"],
            cwd=comfyui,
            capture_output=True,
            text=True,
            timeout=600,
        )
        # The node definitions as ComfyUI's /object_info builds them, from ComfyUI's own loader.
        info = subprocess.run(
            [python, "-c", NODE_INFO], cwd=comfyui, capture_output=True, text=True, timeout=600
        )  # fmt: skip
    finally:
        link.unlink()
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    ours = [line for line in log.splitlines() if link.name in line]
    assert ours, f"ComfyUI did not report loading {link.name}:\n{log[-3000:]}"
    assert not any("IMPORT FAILED" in line or "comfy_entrypoint" in line for line in ours), "\n".join(ours)
    assert info.returncode == 0, info.stderr[-3000:]
    nodes = json.loads(info.stdout.strip().splitlines()[-1])
    assert nodes == EXPECTED_OUTPUTS, nodes


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
