"""Installer hook for ComfyUI-Manager and Automatic1111.

Installs the packages of requirements.txt that are missing, with the Python
that runs this file. It never installs or upgrades torch (the host owns it).
Inside Automatic1111 it does nothing: A1111 pins its own gradio and
transformers and only needs to load SPARE's LoRA files, which it does natively.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"


def running_inside_automatic1111() -> bool:
    launch = sys.modules.get("launch")
    return launch is not None and hasattr(launch, "run_pip")


def missing_requirements(path: Path = REQUIREMENTS) -> list[str]:
    """Requirement lines whose package is not installed at all (never upgrades)."""
    missing = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]
        if name.lower() == "torch":
            continue
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(line)
    return missing


def main() -> None:
    if running_inside_automatic1111():
        return
    missing = missing_requirements()
    if missing:
        subprocess.check_call([sys.executable, "-m", "pip", "install", *missing])


if __name__ == "__main__":
    main()
