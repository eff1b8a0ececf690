"""The documentation stays complete: docstrings on the public API, and a site whose pages are all reachable.

- every public module, class, function and public method of ``fcrkit`` has a docstring (the API
  reference in ``docs/api/`` is generated from them);
- every public module is rendered on an API page (``::: fcrkit.xxx`` in ``docs/api/*.md``);
- every page named in ``mkdocs.yml``'s ``nav`` exists, and every ``docs/**/*.md`` page is in the nav;
- the getting-started page shows the README's two Quick start commands, exactly.

The site itself is built by ``mkdocs build --strict`` in ``.ci/run``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import fcrkit

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


# -- the public API ---------------------------------------------------------------------------------------
def public_modules() -> list[ModuleType]:
    """``fcrkit`` and every module under it whose dotted path has no part starting with ``_``."""
    modules = [fcrkit]
    for info in pkgutil.walk_packages(fcrkit.__path__, prefix="fcrkit."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        modules.append(importlib.import_module(info.name))
    return modules


def public_objects(module: ModuleType) -> dict[str, object]:
    """The module's public classes and functions: its ``__all__``, or those defined in it."""
    if hasattr(module, "__all__"):
        names = list(module.__all__)
    else:
        names = [n for n, obj in vars(module).items() if not n.startswith("_")
                 and (inspect.isclass(obj) or inspect.isfunction(obj))
                 and getattr(obj, "__module__", None) == module.__name__]
    objects = {}
    for name in names:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            objects[f"{module.__name__}.{name}"] = obj
    return objects


def _has_doc(obj: object) -> bool:
    doc = getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return False
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
        return False  # the signature that @dataclass writes when the class has no docstring
    return True


def public_methods(cls: type) -> dict[str, object]:
    """Public methods and properties defined in the class itself (not inherited)."""
    methods = {}
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        elif isinstance(member, property):
            member = member.fget
        if inspect.isfunction(member):
            methods[name] = member
    return methods


def undocumented() -> list[str]:
    """Every public module, class, function and method without a docstring."""
    missing, seen = [], set()
    for module in public_modules():
        if not _has_doc(module):
            missing.append(f"module {module.__name__}")
        for qualname, obj in public_objects(module).items():
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if not _has_doc(obj):
                missing.append(f"{'class' if inspect.isclass(obj) else 'function'} {qualname}")
            if inspect.isclass(obj):
                for name, method in public_methods(obj).items():
                    if id(method) not in seen and not _has_doc(method):
                        missing.append(f"method {obj.__module__}.{obj.__qualname__}.{name}")
                    seen.add(id(method))
    return missing


def test_every_public_name_has_a_docstring():
    missing = undocumented()
    assert not missing, f"{len(missing)} public name(s) without a docstring:\n  " + "\n  ".join(missing)


def test_every_public_module_is_on_an_api_page():
    rendered = set()
    for page in (DOCS / "api").glob("*.md"):
        rendered |= set(re.findall(r"^:::\s*(fcrkit[\w.]*)\s*$", page.read_text(), re.M))
    absent = [m.__name__ for m in public_modules() if m.__name__ not in rendered]
    assert not absent, "public modules not rendered in docs/api/*.md (add a '::: module' block):\n  " + \
        "\n  ".join(absent)


# -- the site's navigation ------------------------------------------------------------------------------
def _mkdocs_config() -> dict:
    yaml = pytest.importorskip("yaml")  # PyYAML comes with the docs extra (mkdocs)

    class Loader(yaml.SafeLoader):
        """A safe loader that reads tags such as ``!!python/name:...`` as None instead of failing."""

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)


def _nav_pages(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [] if re.match(r"[a-z]+://", nav) else [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in _nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    return []


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    config = _mkdocs_config()
    docs_dir = ROOT / config.get("docs_dir", "docs")
    nav = _nav_pages(config["nav"])
    missing = [p for p in nav if not (docs_dir / p).is_file()]
    assert not missing, f"pages in mkdocs.yml's nav that do not exist under {docs_dir}: {missing}"
    pages = sorted(p.relative_to(docs_dir).as_posix() for p in docs_dir.rglob("*.md"))
    orphans = [p for p in pages if p not in nav]
    assert not orphans, f"pages under {docs_dir} missing from mkdocs.yml's nav (orphaned): {orphans}"
    duplicates = sorted({p for p in nav if nav.count(p) > 1})
    assert not duplicates, f"pages listed twice in the nav: {duplicates}"


# -- Getting started = README Quick start ------------------------------------------------------------------
def _quick_start_commands(text: str) -> list[str]:
    """The commands of the first fenced bash block after a 'Quick start' heading (as .ci/readme_commands.py)."""
    block = re.search(r"^#+\s*quick\s*start.*?$(.*?)^```(?:bash|sh|console|shell)?\s*$(.*?)^```", text,
                      re.I | re.M | re.S)
    assert block, "no 'Quick start' section with a fenced bash block"
    lines = (line.strip().removeprefix("$ ").strip() for line in block.group(2).splitlines())
    return [line for line in lines if line and not line.startswith("#") and not line.startswith(("git clone", "cd "))]


def test_getting_started_shows_the_readme_quick_start_commands():
    readme = subprocess.run([sys.executable, str(ROOT / ".ci" / "readme_commands.py")], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert len(readme) == 2, readme
    assert _quick_start_commands((DOCS / "index.md").read_text()) == readme
