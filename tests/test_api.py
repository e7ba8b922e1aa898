"""The public API is one documented surface, and the layers keep to their places.

Front ends (the CLI, the demo, the benchmarks) import from ``spare_core`` only
names in ``__all__`` (the demo and the benchmarks may also use the toy world,
``spare_core.toy``); the settings module is a leaf; no engine module knows the
toy world by name except the model opener.
"""

import ast
import re
from pathlib import Path

import pytest

import spare_core

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "spare_core"
FRONT_ENDS = {
    ENGINE / "cli.py": False,  # the CLI: public API only (its demo commands hand over to the demo)
    ENGINE / "demo.py": True,  # the demo: public API and the toy world
    ROOT / "bench" / "erasure.py": True,
    ROOT / "bench" / "toy_quality.py": True,
    ROOT / "bench" / "comparison.py": True,
    ROOT / "spare_app" / "forms.py": False,  # the app: public API, and the toy world for its scores
    ROOT / "spare_app" / "session.py": True,
    ROOT / "spare_app" / "ui.py": False,
    ROOT / "bench" / "cost.py": False,
    ROOT / "bench" / "gpu.py": True,
}
#: Engine internals a front end may reach, and why: the cost benchmark times one training step of the
#: trainer below the public stages (on a bare UNet), and the GPU script wraps a random-weight pipeline.
INTERNALS_ALLOWED = {
    ROOT / "bench" / "cost.py": {
        "spare_core.backend",
        "spare_core.lora_naming",
        "spare_core.saliency",
        "spare_core.single_file",
        "spare_core.timesteps",
        "spare_core.trainer",
    },
    ROOT / "bench" / "gpu.py": {"spare_core.backends.diffusers_backend"},
}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) for every ``import``/``from`` in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = "spare_core" if path.parent == ENGINE else ".".join(path.relative_to(ROOT).parent.parts)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            found.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def test_every_public_name_resolves_and_is_documented():
    docs = (ROOT / "docs" / "architecture.md").read_text()
    assert spare_core.__all__ == sorted(set(spare_core.__all__))
    for name in spare_core.__all__:
        assert getattr(spare_core, name) is not None
        assert re.search(rf"`{re.escape(name)}\b", docs), f"docs/architecture.md does not document {name}"


@pytest.mark.parametrize("path", list(FRONT_ENDS), ids=lambda p: p.name)
def test_front_ends_use_only_the_public_api(path):
    allow_toy = FRONT_ENDS[path]
    for module, names in _imports(path):
        if module == "spare_core":
            assert set(names) <= set(spare_core.__all__), (
                f"{path.name} imports non-public {set(names) - set(spare_core.__all__)}"
            )
        elif module.startswith("spare_core."):
            if allow_toy and module.startswith("spare_core.toy"):
                continue
            if path.name == "cli.py" and module == "spare_core.demo":
                continue  # `spare demo` and `spare toy-grid` run the demo front end
            if module in INTERNALS_ALLOWED.get(path, ()):
                continue
            pytest.fail(f"{path.name} imports {module}: use the public API (spare_core.__all__)")


def test_no_engine_module_knows_the_toy_world_except_the_model_opener():
    allowed = {ENGINE / "models.py", ENGINE / "cli.py", ENGINE / "demo.py"}
    for path in ENGINE.rglob("*.py"):
        if "toy" in path.relative_to(ENGINE).parts or path in allowed:
            continue
        for module, names in _imports(path):
            full = [module] + [f"{module}.{n}" for n in names]
            assert not any(m.startswith("spare_core.toy") for m in full), f"{path.name} imports {module}"


def test_settings_are_a_leaf():
    engine_imports = [m for m, _ in _imports(ENGINE / "config.py") if m.startswith(("spare_core", "torch"))]
    assert engine_imports == []


def test_importing_the_package_or_the_settings_loads_neither_torch_nor_diffusers():
    import subprocess
    import sys

    code = "import sys, spare_core, spare_core.config; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _repository_files(pattern: str) -> list[Path]:
    return [p for p in ROOT.rglob(pattern) if ".venv" not in p.parts and ".git" not in p.parts]


def test_the_repository_explains_itself():
    """Every Markdown document the code and docs point to is in the repository (a clone has nothing else)."""
    present = {p.name for p in _repository_files("*.md")}
    mention = re.compile(r"(?<![\w%])([A-Za-z][\w-]*\.md)\b")
    sources = [
        *_repository_files("*.md"),
        *_repository_files("*.py"),
        *_repository_files("*.js"),
        *_repository_files("*.mjs"),
    ]
    for path in sources:
        for name in mention.findall(path.read_text(errors="replace")):
            assert name in present, f"{path.relative_to(ROOT)} points to {name}, which this repository does not hold"
