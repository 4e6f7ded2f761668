"""dvc.yaml's code deps cannot go stale: a stage's code deps are exactly the project files its command
imports, followed through the imports. A module moved, added or newly imported without its dep fails
here, before DVC could call a changed stage up to date; a dep no import reaches fails too, since it
would re-run a stage (PPO runs, evaluate: tens of minutes) for an edit that cannot change its outputs.
File deps rather than a folder per sub-package for that reason: the reward-training loop is not PPO's."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("robust_rlhf", "stages")


def _module_file(module: str) -> Path | None:
    """The project file that `import module` executes last (a module file or a package's __init__)."""
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_inits(module: str) -> list[Path]:
    """`import a.b.c` also runs a/__init__.py and a/b/__init__.py."""
    parts = module.split(".")
    return [init for i in range(1, len(parts)) if (init := ROOT.joinpath(*parts[:i], "__init__.py")).is_file()]


def _imported_modules(path: Path) -> set[str]:
    """Dotted names a file imports: `from a import b` may import module a.b, so both are candidates."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _built_sources(file: Path) -> list[Path]:
    """The C++ a module compiles when it runs: csrc/<its name>.cpp beside it (runtime/small_batch_linear.py)."""
    source = file.parent / "csrc" / f"{file.stem}.cpp"
    return [source] if source.is_file() else []


def import_closure(module: str) -> set[Path]:
    """Every project file that running `python -m module` can import (or build, `_built_sources`), relative
    to the repository root."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        files = [f for f in [_module_file(name), *_package_inits(name)] if f is not None]
        for file in files:
            if file not in seen:
                seen.add(file)
                seen.update(_built_sources(file))
                todo.extend(_imported_modules(file))
    return {file.relative_to(ROOT) for file in seen}


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _covered(file: Path, deps: list[str]) -> bool:
    return any(file == Path(dep) or Path(dep) in file.parents for dep in deps)


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_every_file_a_stage_imports_is_inside_its_deps(stage):
    definition = _stages()[stage]
    command = definition["cmd"].split()
    assert command[:2] == ["python", "-m"], f"{stage}: cmd is not `python -m <module>`"
    closure = import_closure(command[2])
    assert Path(command[2].replace(".", "/") + ".py") in closure
    gaps = sorted(str(file) for file in closure if not _covered(file, definition["deps"]))
    assert not gaps, f"dvc.yaml stage {stage} imports files outside its deps: {gaps}"
    code_deps = {Path(dep) for dep in definition["deps"] if dep.split("/")[0] in PROJECT_PACKAGES}
    unused = sorted(str(dep) for dep in code_deps - closure)
    assert not unused, f"dvc.yaml stage {stage} has code deps that its command never imports: {unused}"


def test_the_closure_follows_imports_through_packages():
    # stages.ppo -> robust_rlhf.rl.run -> ... -> robust_rlhf.rl.losses; and each package's __init__.
    closure = import_closure("stages.ppo")
    assert Path("robust_rlhf/rl/losses.py") in closure
    assert Path("robust_rlhf/rl/__init__.py") in closure
    assert Path("robust_rlhf/__init__.py") in closure
    assert not any(part.parts[0] == "tests" for part in closure)


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_every_code_dep_exists(stage):
    missing = [dep for dep in _stages()[stage]["deps"] if dep.endswith(".py") and not (ROOT / dep).is_file()]
    assert not missing, f"dvc.yaml stage {stage} names code deps that do not exist: {missing}"
