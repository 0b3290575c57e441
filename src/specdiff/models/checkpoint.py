"""Checkpoint IO: safetensors weights with the JSON config inside, plus a JSON sidecar.

A model checkpoint is ``NAME.safetensors`` (float32 weights; the safetensors
metadata holds ``format``, ``config`` and ``meta`` as JSON strings, so the file
alone is enough to rebuild the model) and ``NAME.json`` beside it (the same
config and meta, the file's SHA-256 and, for shipped checkpoints, the command
that produced it). Every write goes to a temporary file first and is moved in
place with ``os.replace``, so a crash never leaves a half-written checkpoint.

Loading checks, in order: the file exists; safetensors can parse it (a
truncated or overwritten file fails here); the checksums match (the sidecar's
SHA-256 of the file when the sidecar records one, whatever the file is named now,
and the SHA-256 of the tensor payload that ``save_model`` and training checkpoints
record in the file's own metadata; a file with neither loads with a warning that it
cannot be verified); the config is valid; the tensors match the config's
parameter names and shapes; the weights are finite. Each failure is a
``ValueError`` that names the file and says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..fileio import atomic_write, atomic_write_json
from .config import config_from_dict, config_to_dict

FORMAT = "specdiff-model-v1"
TRAIN_FORMAT = "specdiff-train-v1"
#: metadata key of :func:`payload_sha256`, in model files and training checkpoints
PAYLOAD_KEY = "payload_sha256"


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                            metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` through a temporary file + ``os.replace``."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def payload_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes, in name order.

    Computed from the tensors rather than the file, so it can go into the file's own
    metadata before the file exists, and any flipped payload byte changes it.
    """
    h = hashlib.sha256()
    for k in sorted(tensors):
        v = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_payload(path, tensors: dict[str, torch.Tensor], metadata: dict, what: str) -> None:
    """Compare ``tensors`` with the :data:`PAYLOAD_KEY` checksum in ``metadata``.

    ``ValueError`` on a mismatch; a warning (the file still loads) when none is recorded.
    """
    recorded = metadata.get(PAYLOAD_KEY)
    if not recorded:
        warnings.warn(f"{what} {path} has no recorded checksum, so it cannot be checked for "
                      "corruption; save it again to add one", stacklevel=3)
        return
    digest = payload_sha256(tensors)
    if digest != recorded:
        raise ValueError(f"{what} {path} is corrupt: its tensors have sha256 {digest[:12]}... but "
                         f"{recorded[:12]}... was recorded when it was saved; restore a good copy "
                         "or delete it and train again")


# the names fileio.atomic_write gives its temporary files: ".{stem}.{8 random}.tmp{suffix}"
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?$")


def is_temp_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like an atomic write's temporary file: one that a kill
    during the write left behind, never a checkpoint to load."""
    return bool(_TEMP_NAME.match(Path(path).name))


def remove_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files interrupted atomic writes left in ``folder``; returns them."""
    removed = []
    for p in sorted(Path(folder).glob(".*.tmp*")):
        if p.is_file() and is_temp_file(p):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def save_model(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], config, *,
               meta: dict | None = None, record: dict | None = None) -> Path:
    """Save weights + config (+ free-form ``meta``) as a loadable model checkpoint.

    ``record`` (e.g. the exact training command) goes only into the JSON sidecar.
    Returns the path of the ``.safetensors`` file.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"model checkpoints are .safetensors files, got {path}")
    cfg = config_to_dict(config)
    meta = dict(meta or {})
    tensors = {k: v.float() for k, v in state_dict.items()}
    atomic_save_safetensors(path, tensors, {
        "format": FORMAT, "config": json.dumps(cfg), "meta": json.dumps(meta),
        PAYLOAD_KEY: payload_sha256(tensors),
    })
    side = {"format": FORMAT, "file": path.name, "sha256": sha256_file(path),
            "bytes": path.stat().st_size, "config": cfg, "meta": meta}
    if record:
        side["record"] = record
    atomic_write_json(sidecar_path(path), side)
    return path


def _bad(path, what: str) -> ValueError:
    return ValueError(
        f"checkpoint {path} {what}; re-copy the file (shipped models live in "
        "src/specdiff/checkpoints/) or retrain it with `specdiff train`"
    )


def _read_sidecar(path: Path) -> dict | None:
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        obj = json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise _bad(side, f"is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise _bad(side, "is not a JSON object")
    return obj


def _verify(path: Path, tensors: dict, md: dict) -> None:
    """Every checksum recorded for ``path``; a warning when there is none.

    The sidecar's SHA-256 is checked whatever its ``file`` field says: a checkpoint copied
    with its sidecar under a new name is the same file and must still match.
    """
    side = _read_sidecar(path)
    file_sha = (side or {}).get("sha256")
    if file_sha:
        digest = sha256_file(path)
        if digest != file_sha:
            raise _bad(path, f"fails its checksum (sha256 {digest[:12]}... but "
                             f"{sidecar_path(path).name} records {file_sha[:12]}...): the file "
                             "is corrupt")
    recorded = md.get(PAYLOAD_KEY)
    # a file whose bytes match the sidecar holds the payload it was saved with: hash once
    if recorded and not file_sha and payload_sha256(tensors) != recorded:
        raise _bad(path, "fails the checksum recorded inside it (sha256 of its tensors): the "
                         "file is corrupt")
    if not recorded and not file_sha:
        what = "training checkpoint" if md.get("format") == TRAIN_FORMAT else "checkpoint"
        warnings.warn(f"{what} {path} has no recorded checksum (no SHA-256 in the file or in "
                      f"{sidecar_path(path).name}), so it cannot be checked for corruption",
                      stacklevel=3)


def read_checkpoint(path: str | os.PathLike, *, verify: bool = True):
    """Read ``(tensors, config, meta)`` from a model checkpoint, with the checks above."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    size = path.stat().st_size
    if size < 16:
        raise _bad(path, f"is truncated ({size} bytes)")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    except SafetensorError as e:
        raise _bad(path, f"is truncated or corrupt (safetensors: {e})") from None
    if verify:
        _verify(path, tensors, md)
    else:
        _read_sidecar(path)  # still a clear error for a broken sidecar
    if md.get("format") == TRAIN_FORMAT:
        # a training state: its EMA weights are the model (useful mid-training)
        try:
            cfg = config_from_dict(json.loads(md["config"])["model"])
        except (KeyError, json.JSONDecodeError) as e:
            raise _bad(path, f"has an unreadable training config ({e})") from None
        ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        return ema, cfg, {"step": int(md.get("step", 0)), "from_train_state": True}
    if md.get("format") != FORMAT:
        raise _bad(path, f"is not a specdiff model (format {md.get('format')!r}, expected {FORMAT!r})")
    try:
        cfg = config_from_dict(json.loads(md["config"]))
        meta = json.loads(md.get("meta", "{}"))
    except (KeyError, json.JSONDecodeError) as e:
        raise _bad(path, f"has an unreadable config ({e})") from None
    return tensors, cfg, meta


def load_state_checked(net: torch.nn.Module, tensors: dict[str, torch.Tensor], path) -> None:
    """``load_state_dict`` with a clear error when names or shapes differ from the config."""
    own = net.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [k for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} with other shapes (e.g. {k}: file "
                         f"{tuple(tensors[k].shape)} vs config {tuple(own[k].shape)})")
        raise _bad(path, "does not match its model config: tensors " + ", ".join(parts))
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise _bad(path, f"holds non-finite weights (e.g. {bad[0]})")
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})
