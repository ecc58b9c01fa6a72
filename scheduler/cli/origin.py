"""Whether the `ledger` and `scheduler` packages this process imported are smsledger's own.

smsledger installs the top-level packages `ledger` and `scheduler`, and PyPI has unrelated
packages of both names. Installed into one environment they overwrite each other's files, and
one earlier on ``sys.path`` shadows the other. `smsledger check` reports both.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re

__all__ = ["DISTRIBUTION", "PACKAGES", "foreign_packages"]

#: The distribution's name, and the top-level packages it installs; each carries a marker
#: attribute, ``__smsledger__``, set in its ``__init__.py``.
DISTRIBUTION = "smsledger"
PACKAGES = ("ledger", "scheduler")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def foreign_packages() -> list[str]:
    """One warning per top-level package that is not smsledger's, or that another installed
    distribution also writes into; empty when all is well."""
    problems: list[str] = []
    try:
        owners = importlib.metadata.packages_distributions()
    except Exception:
        owners = {}
    for name in PACKAGES:
        module = importlib.import_module(name)
        if getattr(module, "__smsledger__", False) is not True:
            where = getattr(module, "__file__", None) or "a namespace package"
            problems.append(
                f"the '{name}' package imported is not smsledger's ({where}): an unrelated "
                f"package of that name comes first on sys.path; install smsledger in a virtual "
                "environment of its own"
            )
            continue
        others = sorted({d for d in owners.get(name, []) if _normalized(d) != DISTRIBUTION})
        if others:
            problems.append(
                f"the '{name}' package is also installed by {', '.join(others)}: their files "
                "and smsledger's share one folder and overwrite each other; install smsledger "
                "in a virtual environment of its own"
            )
    return problems
