"""The shape of the code, checked from the source: the import order of docs/architecture.md, and
no module over 600 lines unless that page says why."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "cib_core"
PLUGINS = ROOT / "cib_plugins"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# Lowest first; a module may import modules of its own rank or below, never above. The longest
# matching prefix names a module's rank; docs/architecture.md shows the same table.
RANKS: dict[str, int] = {
    "errors": 0,
    "digest": 1, "mediatypes": 1, "callbacks": 1, "fileio": 1, "caches": 1, "retry": 1, "redact": 1,
    "documents": 2, "reference": 2,
    "models": 3, "validate": 3, "mutate": 3,
    "authn.credentials": 4, "plugin_api": 4, "hookspecs": 4, "compression": 4, "entrypoints": 4,
    "plugins": 5, "layers": 5, "formats": 5,
    "authn": 6,
    "remote": 7,
    "stores": 8,
    "cli": 10,
    "testing": 11,
}
LIBRARY_DEFAULT_RANK = 9  # image, copy and the other builders over stores
LIMIT = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def rank(name: str) -> int:
    best, best_len = LIBRARY_DEFAULT_RANK, -1
    for prefix, value in RANKS.items():
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
            best, best_len = value, len(prefix)
    return best


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module inside cib_core or cib_plugins) for every import in ``path``, type-only
    and function-level imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "cib_core":
                # `from cib_core import errors` names a module; `from cib_core import Image` a name
                found += [(node.lineno, f"cib_core.{alias.name}") for alias in node.names
                          if (CORE / alias.name).exists() or (CORE / f"{alias.name}.py").exists()]
                found.append((node.lineno, "cib_core"))
            else:
                found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] in ("cib_core", "cib_plugins")]


def core_modules() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py"))


def test_core_imports_follow_the_layer_order() -> None:
    problems = []
    for path in core_modules():
        here = module_name(path)
        if here == "":  # cib_core/__init__.py: the public face re-exports from every layer
            continue
        for line, target in imports(path):
            if target.startswith("cib_plugins"):
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}: the core "
                                "names builtin plugins only through their entry points")
                continue
            if target == "cib_core":
                continue
            there = target.removeprefix("cib_core.")
            if rank(there) > rank(here):
                problems.append(f"{path.relative_to(ROOT)}:{line}: {here} (rank {rank(here)}) "
                                f"imports {there} (rank {rank(there)})")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("package", ["authn", "remote"])
def test_auth_and_remote_never_import_image_models(package: str) -> None:
    for path in (CORE / package).rglob("*.py"):
        for line, target in imports(path):
            assert not re.match(r"cib_core\.(models|image|stores|copy|formats|layers)\b", target), \
                f"{path.relative_to(ROOT)}:{line} imports {target}"


def test_nothing_in_the_library_imports_the_cli_or_the_test_bed() -> None:
    for path in core_modules():
        here = module_name(path)
        if here.startswith(("cli", "testing")):
            continue
        for line, target in imports(path):
            assert not target.startswith(("cib_core.cli", "cib_core.testing")), \
                f"{path.relative_to(ROOT)}:{line} imports {target}"


def plugin_modules() -> list[Path]:
    """Every module of the builtin plugins: one-module plugins and plugin packages alike."""
    return sorted(PLUGINS.rglob("*.py"))


def test_builtin_plugins_use_only_public_names_and_never_each_other() -> None:
    allowed = ("cib_core", "cib_core.plugin_api")
    for path in plugin_modules():
        for line, target in imports(path):
            assert target in allowed, f"{path.relative_to(ROOT)}:{line} imports {target}"
        # a plugin package's modules import each other relatively, never beyond the package
        depth = len(path.relative_to(PLUGINS).parts) - 1
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert depth and node.level <= depth, \
                    f"{path.relative_to(ROOT)}:{node.lineno} imports from outside its plugin"


def test_long_modules_are_explained_in_the_architecture_page() -> None:
    page = ARCHITECTURE.read_text(encoding="utf-8")
    unexplained = []
    for path in [*core_modules(), *plugin_modules()]:
        lines = len(path.read_text(encoding="utf-8").splitlines())
        name = str(path.relative_to(ROOT))
        if lines > LIMIT and f"`{name}`" not in page:
            unexplained.append(f"{name} ({lines} lines)")
    assert not unexplained, "over 600 lines without a word in docs/architecture.md: " + ", ".join(unexplained)


def test_the_rank_table_is_the_one_in_the_architecture_page() -> None:
    page = ARCHITECTURE.read_text(encoding="utf-8")
    for prefix, value in RANKS.items():
        assert re.search(rf"\|\s*{value}\s*\|[^\n]*`{re.escape(prefix)}", page), \
            f"docs/architecture.md's import-order table has no `{prefix}` at rank {value}"
