"""The layers of cnnpipe, and that imports only point down: a lower layer never imports a higher one.

config at the floor (with the small modules everything uses); data/ and models/ above it; analysis/ and
inference/ (predict, export) read models and data; tracking/ (MLflow) above those; stages/ (one module per DVC
stage) above all; the CLI on top.
Two parts of one layer never import each other either, so there is no cycle between packages.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = [  # lowest first; a package name covers its modules
    {"cnnpipe", "cnnpipe.uris"},  # what console masks with
    {
        "cnnpipe.errors",
        "cnnpipe.paths",
        "cnnpipe.outputs",
        "cnnpipe.plots",
        "cnnpipe.console",
        "cnnpipe.signals",
    },
    {"cnnpipe.layers"},
    {"cnnpipe.config"},
    {"cnnpipe.data", "cnnpipe.models"},
    {"cnnpipe.analysis", "cnnpipe.inference"},
    {"cnnpipe.tracking"},
    {"cnnpipe.stages"},
    {"cnnpipe.cli"},
    {"cnnpipe.__main__"},
]


def part(module: str) -> str:
    """The layer entry a module belongs to: its package (cnnpipe.data.store -> cnnpipe.data), or itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (SRC / Path(*parts)).is_dir() else module


def layer(module: str) -> int:
    return next(index for index, names in enumerate(LAYERS) if part(module) in names)


def imports() -> list[tuple[str, str]]:
    """(importer, imported) for every cnnpipe import in src/, those inside functions too."""
    found = []
    for path in SRC.rglob("*.py"):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cnnpipe":
                names = [node.module] if node.module != "cnnpipe" else [f"cnnpipe.{a.name}" for a in node.names]
                found += [(module, name) for name in names]
            elif isinstance(node, ast.Import):
                found += [(module, a.name) for a in node.names if a.name.split(".")[0] == "cnnpipe"]
    return found


def test_every_module_has_a_layer():
    for path in SRC.joinpath("cnnpipe").rglob("*.py"):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        layer(module)  # StopIteration: a new top-level module or package that LAYERS does not place


def test_imports_point_down():
    upward = [
        f"{importer} (layer {layer(importer)}) imports {imported} (layer {layer(imported)})"
        for importer, imported in sorted(set(imports()))
        if part(importer) != part(imported)
        and imported != "cnnpipe"  # `cnnpipe` holds only the version
        and layer(imported) >= layer(importer)
    ]
    assert not upward, "only lower layers may be imported: " + "; ".join(upward)


def test_the_check_can_fail():
    assert layer("cnnpipe.models.module") == layer("cnnpipe.data.store")  # so models -> data would be refused
    assert layer("cnnpipe.config") < layer("cnnpipe.models.spec")
