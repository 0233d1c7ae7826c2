"""Every module a DVC stage runs is one of its dependencies in dvc.yaml, so that editing it reruns the stage.

The modules are found the way Python finds them: from `cnnpipe.stages.STAGE`, every `import cnnpipe...` and
`from cnnpipe... import ...` (in functions too), followed to the end. A package's empty `__init__.py` does not
count; `cnnpipe/__init__.py` holds only the version.
"""

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return {name for name in names if name.split(".")[0] == "cnnpipe"}


def _file(module: str) -> Path | None:
    base = SRC / module.replace(".", "/")
    return next((path for path in (base.with_suffix(".py"), base / "__init__.py") if path.exists()), None)


def modules_run_by(module: str) -> set[str]:
    """Repository-relative paths of every cnnpipe module `module` imports, directly or not, and its own."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = _file(todo.pop())
        if path is not None and path not in seen:
            seen.add(path)
            todo.extend(_imported(path))
    return {path.relative_to(REPO).as_posix() for path in seen if path.name != "__init__.py"}


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_a_stage_runs_is_a_dependency(stage):
    deps = [dep if isinstance(dep, str) else next(iter(dep)) for dep in STAGES[stage]["deps"]]
    run = modules_run_by(f"cnnpipe.stages.{stage}")
    assert f"src/cnnpipe/stages/{stage}.py" in run
    missing = sorted(path for path in run if not _covered(path, deps))
    assert not missing, f"dvc.yaml: stage {stage} runs {missing} but does not list them in its deps"
    unused = sorted(dep for dep in deps if dep.startswith("src/") and not any(_covered(path, [dep]) for path in run))
    assert not unused, f"dvc.yaml: stage {stage} lists {unused}, which it never runs: editing them reruns it needlessly"


def test_the_search_follows_imports_inside_functions():
    assert "src/cnnpipe/tracking/compare.py" in modules_run_by("cnnpipe.cli")  # imported inside _compare
