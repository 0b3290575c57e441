"""Per-family adapters, discovered by file: each module here that defines ``ADAPTER``
(a :class:`~specdiff.integrations.families.base.Adapter` subclass) serves the
diffusers pipeline classes it names. Adding a family is adding one file."""

from __future__ import annotations

import importlib
import pkgutil

from .base import Adapter

__all__ = ["Adapter", "adapters", "find_adapter", "find_adapter_for_class"]

_CACHE: list[type[Adapter]] | None = None


def adapters() -> list[type[Adapter]]:
    """All adapter classes, in file-name order."""
    global _CACHE
    if _CACHE is None:
        found = []
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if info.name.startswith("_") or info.name == "base":
                continue
            mod = importlib.import_module(f"{__name__}.{info.name}")
            cls = getattr(mod, "ADAPTER", None)
            if cls is not None:
                found.append(cls)
        _CACHE = found
    return _CACHE


def supported_classes() -> list[str]:
    return [name for a in adapters() for name in a.pipeline_classes]


def find_adapter(pipe) -> type[Adapter]:
    """The adapter for ``pipe`` (matched on the class names of its MRO), or a ValueError."""
    return find_adapter_for_class(type(pipe))


def find_adapter_for_class(cls: type) -> type[Adapter]:
    """The adapter for pipelines of class ``cls`` (e.g. the class a folder's
    ``model_index.json`` names, before loading it), or a ValueError."""
    for name in [c.__name__ for c in cls.__mro__]:
        for a in adapters():
            if name in a.pipeline_classes:
                return a
    raise ValueError(
        f"SpectralPipeline does not support {cls.__name__}; supported pipelines: "
        f"{', '.join(supported_classes())}. For another model, wrap its denoiser as a specdiff "
        "Denoiser and call specdiff.sample (docs/diffusers.md), or add an adapter file in "
        "specdiff/integrations/families/"
    )
