"""The house's layering, checked from the imports: data flows source -> follower -> matcher -> store ->
dispatcher -> sinks, and no module imports from a layer above its own. A new module must be given a layer
here, which is the moment to ask where it belongs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Lowest first. A module takes the layer of its longest matching prefix; modules of one layer may import
# each other. `alerts.signing` is the Standard Webhooks secret format, standard library only: config checks
# secrets with it, so it sits at the bottom although its package sits high.
LAYERS: list[tuple[str, ...]] = [
    ("depositwatch", "depositwatch.jsonutil", "depositwatch.timeutil", "depositwatch.alerts.signing"),
    ("depositwatch.models",),
    ("depositwatch.messages", "depositwatch.addresses"),
    ("depositwatch.config", "depositwatch.logging", "depositwatch.preflight"),
    ("depositwatch.metrics", "depositwatch.supervise", "depositwatch.systemd", "depositwatch.addressbook"),
    ("depositwatch.chains", "depositwatch.testing"),
    ("depositwatch.registry", "depositwatch.keytable"),
    ("depositwatch.matcher",),
    ("depositwatch.store",),
    ("depositwatch.sweeps",),
    ("depositwatch.follower", "depositwatch.mempool", "depositwatch.evm_pending"),
    ("depositwatch.pipeline", "depositwatch.leadership"),
    ("depositwatch.alerts",),
    ("depositwatch.replay", "depositwatch.replay_shards", "depositwatch.report", "depositwatch.api"),
    ("depositwatch.service", "depositwatch.health", "depositwatch.chain_runner", "depositwatch.book_watch"),
    ("depositwatch.devnet", "depositwatch.demo"),
    ("depositwatch.commands",),
    ("depositwatch.cli", "depositwatch.__main__"),
]


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def runtime_imports(path: Path) -> list[tuple[int, str]]:
    """Every `depositwatch` import of a module, with its line, except those only for the type checker."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(child) for child in ast.walk(node))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            # `from depositwatch.store import follow` imports the module depositwatch.store.follow
            target = max((n for n in names if _is_module(n)), key=len, default=node.module)
            found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return [(line, name) for line, name in found if name == "depositwatch" or name.startswith("depositwatch.")]


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


MODULES = sorted(SRC.joinpath("depositwatch").rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    assert MODULES
    unplaced = [module_name(path) for path in MODULES if layer_of(module_name(path)) is None]
    assert unplaced == [], "give these modules a layer in tests/test_layering.py"


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_no_module_imports_from_a_higher_layer(path: Path) -> None:
    module = module_name(path)
    own = layer_of(module)
    assert own is not None
    upward = [
        f"{path.relative_to(SRC)}:{line} imports {target} (layer {layer_of(target)} > {own})"
        for line, target in runtime_imports(path)
        if (layer_of(target) or 0) > own
    ]
    assert upward == []


def test_the_bottom_layer_stands_on_the_standard_library_alone() -> None:
    """The modules of the lowest layer import nothing of the project (apart from the package itself)."""
    for path in MODULES:
        module = module_name(path)
        if layer_of(module) == 0 and module != "depositwatch":
            assert [t for _, t in runtime_imports(path) if t != "depositwatch"] == [], module


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a store module importing the dispatcher is caught; a TYPE_CHECKING one is not."""
    store = SRC / "depositwatch" / "store" / "follow.py"
    assert layer_of("depositwatch.alerts.dispatcher") > layer_of(module_name(store))  # type: ignore[operator]
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "from depositwatch.alerts import dispatcher\n"
        "if TYPE_CHECKING:\n    from depositwatch.service import Service\n"
    )
    assert runtime_imports(probe) == [(2, "depositwatch.alerts.dispatcher")]


def test_the_readmes_module_map_names_modules_that_exist() -> None:
    """README's "How it works" table: every module or folder it names is there (names inside a folder's
    parentheses are looked up in that folder)."""
    readme = (SRC.parent / "README.md").read_text()
    table = readme[readme.index("| layer | modules | job |") :].split("\n\n", 1)[0]
    package = SRC / "depositwatch"
    missing = []
    for row in table.splitlines()[2:]:
        modules = row.split("|")[2]
        for group in re.finditer(r"`([\w./]+)`(?: \(([^)]*)\))?", modules):
            head = package / group.group(1)
            if not head.exists():
                missing.append(group.group(1))
            inner = group.group(2) or ""
            folder = head if head.is_dir() else package
            missing.extend(
                f"{group.group(1)}{name}"
                for name in re.findall(r"`([\w.*/]+)`", inner)
                if not any(folder.glob(name.rstrip("/")))
            )
    assert missing == []
