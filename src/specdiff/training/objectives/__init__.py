"""Training objectives as plug-ins: one file per objective, found by name.

Every module in this package except ``base`` registers its objective with
``@register("name")`` when imported; :func:`objective_class` imports them all
the first time a name is looked up, so adding an objective is adding a file.
Code outside the package (a test, a user's method) registers the same way.

    flow: rectified-flow matching on data crops (the embedded models' pre-training)
    spd:  SPD fine-tuning: the states the progressive sampler visits, a frozen teacher
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Frozen, Objective, Trained, Update, check_models, init_weights

#: name -> objective class (filled by :func:`register`; see :func:`objective_class`).
REGISTRY: dict[str, type[Objective]] = {}
_discovered = False


def register(name: str):
    """Class decorator: make ``cls`` the objective for ``TrainConfig(objective=name)``."""

    def deco(cls: type[Objective]) -> type[Objective]:
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise ValueError(f"register({name!r}) needs a subclass of Objective, got {cls!r}")
        old = REGISTRY.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"objective {name!r} is already registered ({old.__module__}."
                             f"{old.__qualname__}); pick another name")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "base" and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    _discovered = True


def objective_names() -> list[str]:
    """The registered objective names, sorted."""
    _discover()
    return sorted(REGISTRY)


def objective_class(name: str) -> type[Objective]:
    """The objective registered as ``name`` (``ValueError`` listing the known names)."""
    _discover()
    cls = REGISTRY.get(name)
    if cls is None:
        known = ", ".join(repr(n) for n in sorted(REGISTRY))
        raise ValueError(f"objective must be one of {known}, got {name!r}")
    return cls


__all__ = ["REGISTRY", "register", "objective_class", "objective_names", "Objective", "Trained",
           "Frozen", "Update", "check_models", "init_weights"]
