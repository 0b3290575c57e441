"""Record (or compare) the exact result of a few training steps for objectives flow and spd.

    python benchmarks/training_behaviour_check.py --record outputs/train-before.json
    python benchmarks/training_behaviour_check.py --compare outputs/train-before.json

Hashes every tensor of model.safetensors and train_state.safetensors (SHA-256 of the bytes),
the loss history (step, loss) and the exported model meta (minus wall-clock fields).
Uses only the public API that exists before and after the refactor.
"""

import argparse
import hashlib
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

torch.set_num_threads(1)

from specdiff.training import TrainConfig, load_photos, train  # noqa: E402

UNET = {"kind": "unet", "base": 8, "mults": [1, 2], "time_dim": 16}
DIT = {"kind": "dit", "patch": 4, "dim": 16, "depth": 2, "heads": 2, "time_dim": 16}


def cfg(**kw):
    base = dict(model=UNET, steps=6, sizes=(16, 32), size_weights=(1.0, 1.0), pixels=4 * 16 * 16,
                warmup=2, checkpoint_every=3, log_every=2, lr=1e-3, shift_size=16)
    base.update(kw)
    return TrainConfig(**base).validate()


def tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: hashlib.sha256(f.get_tensor(k).contiguous().numpy().tobytes()).hexdigest()
                for k in sorted(f.keys())}, f.metadata()


def record_run(out: Path):
    model, _ = tensors(out / "model.safetensors")
    state, md = tensors(out / "train_state.safetensors")
    meta = json.loads((out / "model.json").read_text())["meta"]
    meta.pop("train_seconds", None)
    spectrum = meta.pop("spectrum")
    hist = [[h[0], h[1]] for h in json.loads(md["history"])]
    return {"model": model, "state": state, "history": hist, "meta": meta, "spectrum": spectrum,
            "step": md["step"], "param_groups": md.get("param_groups")}


def run_all(tmp: Path):
    photos = load_photos("skimage", "train")
    res = {}
    kw = dict(progress=False, photos=photos, spectrum_sizes=(16,))
    train(cfg(), tmp / "flow", **kw)
    res["flow"] = record_run(tmp / "flow")
    train(cfg(model=DIT), tmp / "flow-dit", **kw)
    res["flow-dit"] = record_run(tmp / "flow-dit")
    init = str(tmp / "flow")
    train(cfg(init=init, steps=4), tmp / "flow-init", **kw)
    res["flow-init"] = record_run(tmp / "flow-init")
    spd = cfg(init=init, objective="spd", sizes=(32,), size_weights=(1.0,), pixels=4 * 32 * 32,
              spd_mix=(0.5, 0.25, 0.25), spd_scales=(0.5, 0.25))
    train(spd, tmp / "spd", **kw)
    res["spd"] = record_run(tmp / "spd")
    train(spd, tmp / "spd-resumed", progress=False, photos=photos, stop_after=3)
    train(spd, tmp / "spd-resumed", **kw)
    res["spd-resumed"] = record_run(tmp / "spd-resumed")
    return res


def main():
    ap = argparse.ArgumentParser()
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--record")
    g.add_argument("--compare")
    a = ap.parse_args()
    # a fixed work folder: the spd runs record their init path in the exported meta
    work = Path(tempfile.gettempdir()) / "specdiff-train-behaviour"
    shutil.rmtree(work, ignore_errors=True)
    res = run_all(work)
    shutil.rmtree(work, ignore_errors=True)
    if a.record:
        Path(a.record).write_text(json.dumps(res, indent=1, sort_keys=True))
        print(f"recorded {len(res)} runs to {a.record}")
        return 0
    before = json.loads(Path(a.compare).read_text())
    now = json.loads(json.dumps(res))
    bad = 0
    for name in sorted(before.keys() | now.keys()):
        b, n = before.get(name, {}), now.get(name, {})
        for part in sorted(b.keys() | n.keys()):
            same = b.get(part) == n.get(part)
            if part == "spectrum":  # data.fit_spectra varies in the last ulp between runs
                same = b[part].keys() == n[part].keys() and all(
                    math.isclose(x, y, rel_tol=1e-12) for k in b[part]
                    for x, y in zip(b[part][k], n[part][k], strict=True))
            bad += not same
            detail = ""
            if isinstance(b.get(part), dict) and part in ("model", "state"):
                detail = f" ({len(n.get(part, {}))} tensors)"
            print(f"{name:12s} {part:13s} {'identical' if same else 'DIFFERENT'}{detail}")
    print("ALL IDENTICAL" if not bad else f"{bad} parts differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
