"""Public names of a package loaded on first use (PEP 562), so commands that do not need torch start without it."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for ``package`` whose public ``exports`` (name → defining module) are imported
    when first read; the package's ``if TYPE_CHECKING:`` block keeps the same imports visible to readers and tools.

    An export named like one of the package's submodules (``loralab.adapters.routing``, the function, and the
    module ``routing.py``) stays the export: importing the submodule binds the module to that attribute, so the
    package's class reads such names through the export table first."""
    module = sys.modules[package]
    namespace = module.__dict__
    shadowed = {name for name in exports if importlib.util.find_spec(f"{package}.{name}") is not None}

    def resolve(name: str):
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def __getattr__(name: str):
        if name not in exports:  # a submodule read as an attribute (``loralab.adapters.registry``) loads too
            if importlib.util.find_spec(f"{package}.{name}") is None:
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            return importlib.import_module(f"{package}.{name}")
        return resolve(name)

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    if shadowed:
        class Package(types.ModuleType):
            def __getattribute__(self, name: str):
                if name in shadowed:
                    value = namespace.get(name)
                    return value if value is not None and not isinstance(value, types.ModuleType) else resolve(name)
                return super().__getattribute__(name)

        module.__class__ = Package
    return __getattr__, __dir__
