"""Griffe extension used by the documentation build (mkdocs.yml); not part of the site or the package.

- Sphinx cross-reference roles in docstrings (``:func:`fcrkit.compose```, ``:class:`~fcrkit.spec.ModelSpec```)
  are rendered as inline code (the short name with ``~``), since mkdocstrings reads Markdown.
- A recipe (a subclass of ``fcrkit.models.Recipe`` with ``build_spec = staticmethod(<spec function>)``)
  gets the signature it has at run time, ``(adata, <the spec function's parameters>, *, seed=None)``,
  instead of the ``(adata, *args, seed=None, **kwargs)`` that static analysis sees.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")
SPEC_FUNCTION = re.compile(r"staticmethod\((\w+)\)")


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


class FcrkitDocs(griffe.Extension):
    """Rewrite Sphinx roles and give recipes their run-time signatures."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Run on every object once the tree is complete."""
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_role, obj.docstring.value)
        if obj.is_class:
            self._recipe_signature(obj)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Run on a top-level package (``on_object`` does not see it)."""
        if pkg.docstring is not None:
            pkg.docstring.value = ROLE.sub(_role, pkg.docstring.value)

    @staticmethod
    def _recipe_signature(cls: griffe.Class) -> None:
        if "Recipe" not in {str(base).rsplit(".", 1)[-1] for base in cls.bases}:
            return
        build_spec = cls.members.get("build_spec")
        match = SPEC_FUNCTION.fullmatch(str(getattr(build_spec, "value", "")))
        spec_function = cls.module.members.get(match.group(1)) if match else None
        if spec_function is None or not spec_function.is_function:
            return
        kind = griffe.ParameterKind
        parameters = [
            griffe.Parameter("adata", annotation="AnnData", kind=kind.positional_or_keyword),
            *spec_function.parameters,
            griffe.Parameter("seed", annotation="int | None", kind=kind.keyword_only, default="None"),
        ]
        init = griffe.Function("__init__", parameters=griffe.Parameters(*parameters), lineno=cls.lineno,
                               endlineno=cls.lineno)
        cls.set_member("__init__", init)
