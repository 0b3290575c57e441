"""Partly trained models: save only what was trained, against a base recorded by SHA-256.

Two kinds of trained part on a frozen base network (an embedded model: a shipped
name such as ``"unet"`` or a checkpoint path):

- ``"lora"``: a peft LoRA injected into the base network
  (``peft.inject_adapter_in_model``); the file holds the adapter's tensors
  (``peft.get_peft_model_state_dict``) and its ``LoraConfig``.
- ``"module"``: a module that holds the base network as its attribute ``base``
  and adds layers around it (an upsampler, a residual head), built by a
  registered builder ``builder(base_net, **config)``; the file holds its
  tensors outside ``base.*`` and the builder's name and config.

A partial file is one safetensors file, written atomically, whose metadata
records the base by name and by the SHA-256 of its checkpoint file, the kind,
the adapter config and free-form ``meta`` (e.g. the sampling schedule a LoRA was
trained for). :func:`load_partial` loads the base, refuses one whose SHA-256
differs (the trained part only means something on the exact weights it was
trained on) and attaches the trained part.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.checkpoint import atomic_save_safetensors, sha256_file

FORMAT = "specdiff-partial-v1"
KINDS = ("lora", "module")

#: builder name -> ``builder(base_net, **config) -> module`` (see :func:`register_module`).
MODULE_BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {}


def register_module(name: str):
    """Decorator: register ``builder(base_net, **config)`` for ``"module"`` partial files."""

    def deco(fn):
        MODULE_BUILDERS[name] = fn
        return fn

    return deco


@dataclass
class PartialModel:
    """A base network with its trained part attached (what :func:`load_partial` returns).

    Attributes:
        net: the network to call, in eval mode: the base network with the LoRA
            injected (``"lora"``), or the builder's module around it (``"module"``).
            The base's parameters are frozen; the trained part's are not.
        model: ``net`` as a :class:`~specdiff.models.EmbeddedModel` (``(x, t) -> x0_hat``)
            with the base's config and meta, for sampling; meaningful when ``net``
            maps ``(x, t)`` to a velocity like its base.
        kind: ``"lora"`` or ``"module"``.
        base: the base's recorded name; ``base_sha256`` its checkpoint's SHA-256.
        config: the adapter's config (the ``LoraConfig`` fields, or the builder's kwargs).
        meta: the free-form metadata saved with it.
    """

    net: torch.nn.Module
    model: object
    kind: str
    base: str
    base_sha256: str
    config: dict
    meta: dict


def base_sha256(base: str | os.PathLike) -> str:
    """SHA-256 of the base's checkpoint file (a shipped name or a path)."""
    from ..models import checkpoint_path

    return sha256_file(checkpoint_path(base))


def _jsonable(d: dict) -> dict:
    """A peft config dict as JSON: sets -> sorted lists, enums -> their values."""

    def conv(v):
        if isinstance(v, set | frozenset):
            return sorted(v)
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return {k: conv(v) for k, v in d.items()}


def _check_base_unchanged(state: dict[str, torch.Tensor], base: str) -> None:
    """The base tensors in ``state`` (peft renames ``a.weight`` to ``a.base_layer.weight``)
    must equal the base checkpoint's: only the trained part is saved."""
    from ..models import checkpoint_path
    from ..models.checkpoint import read_checkpoint

    ref, _, _ = read_checkpoint(checkpoint_path(base))
    for k, v in ref.items():
        head, _, leaf = k.rpartition(".")
        mine = state.get(k, state.get(f"{head}.base_layer.{leaf}" if head else k))
        if mine is None or mine.shape != v.shape or not torch.equal(mine.detach().cpu().float(), v):
            raise ValueError(
                f"the base network differs from the checkpoint {base!r} at {k}: a partial file "
                "saves only the trained part, so the base must be that checkpoint unchanged; "
                "freeze the base while training, or save the whole network with "
                "specdiff.models.save_model")


def _save(path, tensors: dict, *, kind: str, base: str, config: dict, meta: dict | None,
          extra: dict[str, str]) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"partial models are .safetensors files, got {path}")
    if not tensors:
        raise ValueError("the trained part is empty: nothing to save")
    md = {"format": FORMAT, "kind": kind, "base": str(base), "base_sha256": base_sha256(base),
          "config": json.dumps(config), "meta": json.dumps(dict(meta or {})), **extra}
    atomic_save_safetensors(path, {k: v.float() for k, v in tensors.items()}, md)
    return path


def save_lora(path: str | os.PathLike, net: torch.nn.Module, *, base: str,
              adapter: str = "default", meta: dict | None = None) -> Path:
    """Save the peft LoRA ``adapter`` of ``net`` (the base network ``base`` with the adapter
    injected) as ``path``: its tensors, ``LoraConfig`` and ``meta``; returns ``path``."""
    import peft
    from peft import LoraConfig, get_peft_model_state_dict

    cfg = (getattr(net, "peft_config", None) or {}).get(adapter)
    if not isinstance(cfg, LoraConfig):
        raise ValueError(f"the network has no peft LoRA adapter {adapter!r}; inject one with "
                         "peft.inject_adapter_in_model(LoraConfig(...), net)")
    _check_base_unchanged(net.state_dict(), base)
    tensors = get_peft_model_state_dict(net, adapter_name=adapter)
    return _save(path, tensors, kind="lora", base=base, config=_jsonable(cfg.to_dict()), meta=meta,
                 extra={"adapter": adapter, "peft": peft.__version__})


def save_module(path: str | os.PathLike, module: torch.nn.Module, *, base: str, builder: str,
                config: dict | None = None, meta: dict | None = None) -> Path:
    """Save the trained part of ``module`` (everything outside ``module.base``, the frozen base
    network ``base``) as ``path``, with the builder that rebuilds it: ``MODULE_BUILDERS[builder]
    (base_net, **config)``; returns ``path``."""
    inner = getattr(module, "base", None)
    if not isinstance(inner, torch.nn.Module):
        raise ValueError("a 'module' partial model holds its base network as the attribute "
                         "`base` (module.base = base_net); set it")
    _check_base_unchanged(inner.state_dict(), base)
    tensors = {k: v for k, v in module.state_dict().items() if not k.startswith("base.")}
    return _save(path, tensors, kind="module", base=base, config=dict(config or {}), meta=meta,
                 extra={"builder": str(builder)})


def read_partial(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, info)`` of a partial file without loading its base; ``info`` has ``kind``,
    ``base``, ``base_sha256``, ``config``, ``meta`` and ``adapter`` or ``builder``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no partial model at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    except SafetensorError as e:
        raise ValueError(f"partial model {path} is truncated or corrupt ({e}); save it again") from None
    if md.get("format") != FORMAT or md.get("kind") not in KINDS:
        raise ValueError(f"{path} is not a specdiff partial model (format {md.get('format')!r}, "
                         f"expected {FORMAT!r}); load whole models with specdiff.models.load")
    info = {k: md[k] for k in ("kind", "base", "base_sha256", "adapter", "builder") if k in md}
    info["config"] = json.loads(md.get("config", "{}"))
    info["meta"] = json.loads(md.get("meta", "{}"))
    return tensors, info


def _check_keys(path, got, expected, what: str) -> None:
    if set(got) != set(expected):
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        raise ValueError(f"{path} does not fit its {what} ({len(missing)} tensors missing, e.g. "
                         f"{missing[:1]}; {len(extra)} unexpected, e.g. {extra[:1]}); save it again "
                         "with this version, or use the adapter config it was trained with")


def _attach_lora(path, net, tensors, info) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict

    adapter = info.get("adapter", "default")
    with torch.random.fork_rng(devices=[]):  # peft initialises the adapter: keep the caller's RNG
        inject_adapter_in_model(LoraConfig(**info["config"]), net, adapter_name=adapter)
    _check_keys(path, tensors, get_peft_model_state_dict(net, adapter_name=adapter), "LoRA config")
    res = set_peft_model_state_dict(net, tensors, adapter_name=adapter)
    if getattr(res, "unexpected_keys", None):
        raise ValueError(f"{path}: peft did not place {res.unexpected_keys[:1]}; save it again")
    return net


def _attach_module(path, net, tensors, info, builder) -> torch.nn.Module:
    name = info.get("builder", "")
    build = builder or MODULE_BUILDERS.get(name)
    if build is None:
        raise ValueError(f"{path} needs the module builder {name!r}: import the code that "
                         "registers it (specdiff.training.partial.register_module) or pass builder=")
    module = build(net, **info["config"])
    if getattr(module, "base", None) is not net:
        raise ValueError(f"builder {name!r} must return a module whose `base` is the base network")
    _check_keys(path, tensors, [k for k in module.state_dict() if not k.startswith("base.")],
                f"builder {name!r}'s module")
    module.load_state_dict(tensors, strict=False)
    return module


def load_partial(path: str | os.PathLike, *, base: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", builder: Callable | None = None) -> PartialModel:
    """Load the base (``base``, default: the recorded name), check its SHA-256 against the
    recorded one and attach the trained part saved at ``path``.

    Raises ``ValueError`` when the base's SHA-256 differs (naming both), when the file
    is not a partial model or does not fit its config. ``builder`` overrides the
    registered builder of a ``"module"`` file.
    """
    from ..models import EmbeddedModel, load

    tensors, info = read_partial(path)
    where = info["base"] if base is None else base
    digest = base_sha256(where)
    if digest != info["base_sha256"]:
        raise ValueError(
            f"{path} was trained on base {info['base']!r} with sha256 {info['base_sha256']}, but "
            f"{str(where)!r} has sha256 {digest}: a trained part only fits the exact weights it was "
            "trained on; pass base= the checkpoint it was trained on, or retrain it on this base")
    emb = load(where)
    net = emb.net.requires_grad_(False)
    if info["kind"] == "lora":
        net = _attach_lora(path, net, tensors, info)
    else:
        net = _attach_module(path, net, tensors, info, builder)
    net = net.to(device).eval()
    model = EmbeddedModel(net, emb.config, emb.meta, name=str(path))
    return PartialModel(net=net, model=model, kind=info["kind"], base=info["base"],
                        base_sha256=info["base_sha256"], config=info["config"], meta=info["meta"])


__all__ = ["save_lora", "save_module", "load_partial", "read_partial", "register_module",
           "base_sha256", "PartialModel", "MODULE_BUILDERS", "FORMAT"]
