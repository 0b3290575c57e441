"""The training engine: one loop for every objective (accelerate; CPU here, many GPUs unchanged).

The engine owns what every method shares: accelerate, the learning-rate
schedule, EMA, atomic safetensors checkpoints, bit-exact resume, the progress
bar, the loss history and its PNG, and the exported model with the command
that made it. What is trained, on what batches and with which loss comes from
the objective named by ``TrainConfig.objective`` (:mod:`.objectives`); the
engine never looks at that name.

Reproducibility and resume: objectives draw everything random in step ``k``
from a generator seeded by ``(seed, k, process)`` (:mod:`.batches`), and the
checkpoint holds every trained model's trained tensors, EMA and optimiser
state, so a run resumed from step ``k`` is bit-identical to one that never
stopped. Frozen models are not saved: the objective rebuilds them from their
source (e.g. ``cfg.init``). A checkpoint is one safetensors file written
atomically (temp file + ``os.replace``). Its entries are
``{prefix}model.*``, ``{prefix}ema.*`` and ``{prefix}optim.{param}.{state}``
with ``prefix = ""`` for the model named ``net`` (so single-model checkpoints
keep the layout :func:`specdiff.models.load` reads) and ``"{name}/"`` otherwise.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import operator
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..fileio import save_figure
from ..models.checkpoint import (
    PAYLOAD_KEY,
    atomic_save_safetensors,
    check_payload,
    payload_sha256,
    remove_temp_files,
)
from .config import TrainConfig
from .data import PhotoSet, load_photos
from .objectives import Frozen, Objective, Trained, Update, check_models, objective_class

STATE_FILE = "train_state.safetensors"
STATE_FORMAT = "specdiff-train-v1"


# ---------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------


def lr_at(cfg: TrainConfig, step: int, peak: float | None = None) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine decay to ``peak * cfg.min_lr_frac``
    at ``cfg.steps``; ``peak`` defaults to ``cfg.lr``."""
    lr = cfg.lr if peak is None else peak
    if step < cfg.warmup:
        return lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def ema_decay_at(cfg: TrainConfig, step: int) -> float:
    """EMA decay with warm-up: ``min(cfg.ema_decay, (1 + k) / (10 + k))``."""
    return min(cfg.ema_decay, (1 + step) / (10 + step))


# ---------------------------------------------------------------------------
# trained models and checkpoints
# ---------------------------------------------------------------------------


def trained_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` without its frozen (``requires_grad=False``) parameters: what
    the engine optimises, averages and checkpoints (all of a fully trained network; only the
    adapter of a LoRA or the added module on a frozen base)."""
    frozen = {n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {k: v for k, v in module.state_dict().items() if k not in frozen}


@dataclass(eq=False)
class _Model:
    """The engine's state for one trained model."""

    name: str
    spec: Trained
    module: torch.nn.Module  # what the objective calls (accelerate-prepared after _prepare)
    opt: torch.optim.Optimizer
    ema: torch.nn.Module | None
    keys: frozenset  # its checkpoint entries (trained parameters and buffers)
    raw: torch.nn.Module | None = None  # the unwrapped module
    params: list = field(default_factory=list)  # its trained parameters
    ema_pairs: list = field(default_factory=list)  # (ema, trained) parameter pairs
    ema_buffers: list = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return "" if self.name == "net" else f"{self.name}/"


def _build_models(cfg: TrainConfig, objective: Objective):
    """``(names, trained, frozen)`` from the objective's ``models()``: optimisers and EMA copies
    for the trained models, the frozen ones in eval mode without gradients."""
    torch.manual_seed(cfg.seed)  # model init only; batches use step generators
    specs = check_models(objective, objective.models())
    trained: dict[str, _Model] = {}
    frozen: dict[str, torch.nn.Module] = {}
    for name, spec in specs.items():
        if isinstance(spec, Frozen):
            frozen[name] = spec.module.requires_grad_(False).eval()
            continue
        m = spec.module
        opt = torch.optim.AdamW(
            [p for p in m.parameters() if p.requires_grad],
            lr=cfg.lr if spec.lr is None else spec.lr, betas=spec.betas,
            weight_decay=cfg.weight_decay if spec.weight_decay is None else spec.weight_decay)
        ema = copy.deepcopy(m).requires_grad_(False) if spec.ema else None
        trained[name] = _Model(name, spec, m, opt, ema, frozenset(trained_state(m)))
    return list(specs), trained, frozen


def _optim_tensors(opt: torch.optim.Optimizer, prefix: str = "") -> dict[str, torch.Tensor]:
    sd = opt.state_dict()
    out = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            out[f"{prefix}optim.{pid}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    return out


def _load_optim(opt: torch.optim.Optimizer, tensors: dict, groups: list) -> None:
    """Load ``{"{param}.{state}": tensor}`` (prefix stripped) and the saved param groups."""
    sd = opt.state_dict()
    state: dict = {}
    for name, v in tensors.items():
        pid, k = name.split(".", 1)
        state.setdefault(int(pid), {})[k] = v.clone()
    sd["state"] = state
    for g_new, g_old in zip(sd["param_groups"], groups, strict=True):
        g_new.update({k: v for k, v in g_old.items() if k != "params"})
    opt.load_state_dict(sd)


def save_train_state(path: Path, cfg: TrainConfig, trained: dict, step: int,
                     history: list, meter: _Meter | None = None) -> None:
    """Write every trained model's tensors, EMA and optimiser state (atomically), with the
    SHA-256 of the tensors in the metadata (:data:`PAYLOAD_KEY`) for :func:`read_train_state`."""
    tensors: dict[str, torch.Tensor] = {}
    meta = {"format": STATE_FORMAT, "step": str(step), "config": json.dumps(cfg.to_dict()),
            "history": json.dumps(history), "models": json.dumps(list(trained))}
    if meter is not None and meter.sums:  # the loss terms since the last history row
        meta["meter"] = json.dumps(meter.state())
    for m in trained.values():
        p = m.prefix
        tensors.update({f"{p}model.{k}": v for k, v in m.raw.state_dict().items() if k in m.keys})
        if m.ema is not None:
            tensors.update({f"{p}ema.{k}": v for k, v in m.ema.state_dict().items() if k in m.keys})
        tensors.update(_optim_tensors(m.opt, p))
        meta[f"{p}param_groups"] = json.dumps(
            [{k: v for k, v in g.items() if k != "params"} for g in m.opt.state_dict()["param_groups"]])
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}  # once, for both
    meta[PAYLOAD_KEY] = payload_sha256(tensors)
    atomic_save_safetensors(path, tensors, meta)


def read_train_state(path: Path):
    """``(tensors, metadata)`` of a training checkpoint.

    ``ValueError`` if it is truncated, foreign or corrupt (its tensors' SHA-256 differs from
    the one recorded when it was saved); a warning when it records none (older files).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except SafetensorError as e:
        raise ValueError(
            f"training checkpoint {path} is truncated or corrupt ({e}); delete it to start over"
        ) from None
    if md.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a specdiff training checkpoint")
    check_payload(path, tensors, md, "training checkpoint")
    return tensors, md


def _split(tensors, prefix):
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def _load_entries(module: torch.nn.Module, tensors: dict, keys: frozenset, path, what: str) -> None:
    if set(tensors) != keys:
        missing, extra = len(keys - set(tensors)), len(set(tensors) - keys)
        raise ValueError(f"{path} does not hold {what} as this run trains it ({missing} entries "
                         f"missing, {extra} unexpected); resume with the same objective, or use "
                         "another --out folder")
    module.load_state_dict(tensors, strict=False)


def _resume(path: Path, cfg: TrainConfig, trained: dict) -> tuple[int, list, _Meter]:
    """Load ``path`` into the trained models; returns ``(step, history, meter)``."""
    tensors, md = read_train_state(path)
    saved = TrainConfig.from_dict(json.loads(md["config"]))
    if saved != cfg:
        a, b = cfg.to_dict(), saved.to_dict()
        diff = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
        raise ValueError(
            f"{path} was written by a run with other settings ({', '.join(diff)}); "
            "use the same arguments to resume, or another --out folder"
        )
    for m in trained.values():
        p = m.prefix
        _load_entries(m.module, _split(tensors, f"{p}model."), m.keys, path, f"model {m.name!r}")
        if m.ema is not None:
            _load_entries(m.ema, _split(tensors, f"{p}ema."), m.keys, path, f"the EMA of {m.name!r}")
        groups = md.get(f"{p}param_groups")
        if groups is None:
            raise ValueError(f"{path} has no optimiser state for model {m.name!r}; resume with "
                             "the same objective, or use another --out folder")
        _load_optim(m.opt, _split(tensors, f"{p}optim."), json.loads(groups))
    meter = _Meter()
    if "meter" in md:
        meter.load(json.loads(md["meter"]))
    return int(md["step"]), json.loads(md["history"]), meter


def _prepare(acc, trained: dict, frozen: dict) -> None:
    """accelerate's prepare (device, DDP) for the trained models and their optimisers."""
    objs = [o for m in trained.values() for o in (m.module, m.opt)]
    prepared = acc.prepare(*objs)
    for i, m in enumerate(trained.values()):
        m.module, m.opt = prepared[2 * i], prepared[2 * i + 1]
        m.raw = acc.unwrap_model(m.module)
        m.params = [p for p in m.raw.parameters() if p.requires_grad]
        if m.ema is not None:
            m.ema.to(acc.device)
            pairs = zip(m.ema.named_parameters(), m.raw.named_parameters(), strict=True)
            m.ema_pairs = [(pe, pn) for (_, pe), (_, pn) in pairs if pn.requires_grad]
            m.ema_buffers = list(zip(m.ema.buffers(), m.raw.buffers(), strict=True))
    for net in frozen.values():
        net.to(acc.device)


# ---------------------------------------------------------------------------
# one update, one step
# ---------------------------------------------------------------------------


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(_to_device(b, device) for b in batch))
    if isinstance(batch, tuple | list):
        return type(batch)(_to_device(b, device) for b in batch)
    return batch


def _update(acc, cfg: TrainConfig, objective: Objective, nets: dict, m: _Model, opts: list,
            photos: PhotoSet, step: int, index: int) -> dict[str, float]:
    """One optimiser update of model ``m``; returns its loss terms (mean over processes)."""
    upd = Update(m.name, index)
    batch = _to_device(objective.batch(nets, photos, step, acc.process_index, upd), acc.device)
    for g in m.opt.param_groups:
        g["lr"] = lr_at(cfg, step, m.spec.lr)
    terms = objective.loss(nets, batch, upd)
    if not isinstance(terms, dict) or not terms:
        raise ValueError(f"objective {objective.name!r}: loss() must return a non-empty dict "
                         "name -> scalar tensor")
    loss = functools.reduce(operator.add, terms.values())
    # every model's: this update starts from zero, and the gradient a generator's loss leaves
    # in the critic it went through is freed rather than kept until the critic's next update
    for o in opts:
        o.zero_grad(set_to_none=True)
    acc.backward(loss)
    if cfg.grad_clip:
        acc.clip_grad_norm_(m.params, cfg.grad_clip)
    m.opt.step()
    if m.ema is not None:
        with torch.no_grad():
            d = ema_decay_at(cfg, step)
            for pe, pn in m.ema_pairs:
                pe.lerp_(pn.detach(), 1 - d)
            for be, bn in m.ema_buffers:
                be.copy_(bn)
    vals = {k: float(acc.gather(v.detach()[None]).mean()) for k, v in terms.items()}
    for k, v in vals.items():
        if not math.isfinite(v):
            raise ValueError(f"training diverged at step {step} ({k} {v}); lower --lr")
    return vals


class _Meter:
    """Running means of the loss terms between two history rows."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, vals: dict[str, float]) -> None:
        for k, v in vals.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def state(self) -> dict:
        return {"sums": self.sums, "counts": self.counts}

    def load(self, state: dict) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])

    def row(self, step: int, seconds: float) -> list:
        """``[step, sum of the term means, seconds, {term: mean}]`` (then starts over)."""
        means = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums, self.counts = {}, {}
        return [step, sum(means.values()), seconds, means]


# ---------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    # [step, loss (sum of the term means over log_every steps), seconds, {term: mean}]
    history: list
    model_path: Path | None = None
    # temporary files of checkpoint writes a kill interrupted, found in out_dir and deleted
    removed_temp_files: list = field(default_factory=list)


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped :func:`train`: the step that was running finished
    and a checkpoint of it was saved at ``path``; calling ``train`` again resumes from it,
    bit-exactly. A ``KeyboardInterrupt``, so ``except Exception`` does not swallow it."""

    def __init__(self, step: int, path: Path, signal_name: str):
        super().__init__(f"{signal_name} at step {step}: checkpoint saved to {path}")
        self.step, self.path, self.signal_name = step, path, signal_name


class _StopRequests:
    """SIGINT/SIGTERM handlers that only note the request, so the loop can finish the
    running step and checkpoint it. A second signal stops at once (``KeyboardInterrupt``).
    Installed only in the main thread (Python's rule); elsewhere signals act as before."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def requested(self, acc) -> bool:
        """Whether any process was asked to stop (all processes agree, so DDP stops together)."""
        if acc.num_processes == 1:
            return self.signum is not None
        flag = torch.tensor([0.0 if self.signum is None else 1.0], device=acc.device)
        return bool(acc.gather(flag).max() > 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "stop request"


def _run_steps(acc, cfg, objective, nets, trained, photos, step, end, history, meter, out, bar,
               stop: _StopRequests) -> int:
    """Steps ``step .. end - 1``: updates, history rows, checkpoints. Returns the last step.

    Raises :class:`TrainingInterrupted` after the step during which a stop was requested,
    once that step is checkpointed (with the loss terms since the last history row, so a
    resumed run writes the same history).
    """
    opts = [m.opt for m in trained.values()]
    t_start = time.perf_counter()
    elapsed0 = history[-1][2] if history else 0.0
    while step < end:
        for m in trained.values():
            for j in range(m.spec.updates):
                meter.add(_update(acc, cfg, objective, nets, m, opts, photos, step, j))
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == end:
            history.append(meter.row(step, elapsed0 + time.perf_counter() - t_start))
            terms = history[-1][3]
            bar.set_postfix({"loss": f"{history[-1][1]:.4f}"} if len(terms) == 1
                            else {k: f"{v:.4f}" for k, v in terms.items()})
        stopping = stop.requested(acc)
        if acc.is_main_process and (stopping or step % cfg.checkpoint_every == 0 or step == end):
            save_train_state(out / STATE_FILE, cfg, trained, step, history, meter)
            plot_loss(history, out / "loss.png")
        if stopping:
            acc.wait_for_everyone()
            raise TrainingInterrupted(step, out / STATE_FILE, stop.name)
    return step


def train(cfg: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = True,
          stop_after: int | None = None, progress: bool = True, cpu: bool = False,
          command: str | None = None, photos: PhotoSet | None = None,
          spectrum_sizes=(64, 128)) -> TrainResult:
    """Train (or resume) and write ``out_dir/{train_state,model}.safetensors``, ``loss.png``.

    Args:
        cfg: the run; ``cfg.objective`` picks the objective. When resuming, the
            saved config must equal it (else ``ValueError``).
        resume: continue from ``out_dir/train_state.safetensors`` when present.
        stop_after: stop (with a checkpoint) after this many steps in *this*
            call, e.g. to test resuming; the run continues next call.
        cpu: force CPU even when accelerate sees GPUs.
        command: the command line recorded in the exported model's JSON.
        photos: training photos (default: ``load_photos(cfg.data, "train")``).
        spectrum_sizes: crop sizes of the data-spectrum fits recorded in the export.

    SIGINT (Ctrl-C) or SIGTERM finishes the running step, checkpoints it and raises
    :class:`TrainingInterrupted` (a second signal stops at once). Temporary files that a
    kill during a checkpoint write left in ``out_dir`` are deleted first (never loaded).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    cfg = cfg.validate()
    out = Path(out_dir)
    acc = Accelerator(cpu=cpu)
    objective = objective_class(cfg.objective)(cfg)
    # the models first: an init or teacher that cannot be used leaves no folder behind
    names, trained, frozen = _build_models(cfg, objective)
    out.mkdir(parents=True, exist_ok=True)
    removed = remove_temp_files(out) if acc.is_main_process else []
    step, history, meter = 0, [], _Meter()
    state_path = out / STATE_FILE
    if resume and state_path.is_file():
        step, history, meter = _resume(state_path, cfg, trained)
    _prepare(acc, trained, frozen)
    nets = {n: trained[n].module if n in trained else frozen[n] for n in names}
    if photos is None:
        photos = load_photos(cfg.data, "train")
    end = cfg.steps if stop_after is None else min(cfg.steps, step + int(stop_after))
    bar = tqdm(total=cfg.steps, initial=step, desc="train", disable=not (progress and acc.is_main_process),
               dynamic_ncols=True)
    for m in trained.values():
        m.module.train()
    try:
        with _StopRequests() as stop:
            step = _run_steps(acc, cfg, objective, nets, trained, photos, step, end, history,
                              meter, out, bar, stop)
    finally:
        bar.close()
    acc.wait_for_everyone()
    result = TrainResult(out, step, history, removed_temp_files=removed)
    if acc.is_main_process and step >= cfg.steps:
        weights = {n: m.ema if m.ema is not None else m.raw for n, m in trained.items()}
        result.model_path = objective.export(weights, out, history, photos=photos, command=command,
                                             spectrum_sizes=spectrum_sizes)
    return result


# ---------------------------------------------------------------------------
# the loss plot
# ---------------------------------------------------------------------------


def _series(history) -> dict[str, tuple[list, list]]:
    """``{term: (steps, means)}``; rows without terms (written before terms existed) are
    the one series ``"loss"``."""
    out: dict[str, tuple[list, list]] = {}
    for row in history:
        terms = row[3] if len(row) > 3 else {"loss": row[1]}
        for k, v in terms.items():
            s, vals = out.setdefault(k, ([], []))
            s.append(row[0])
            vals.append(v)
    return out


def _running_mean(v: list, k: int) -> list:
    return [sum(v[max(0, i - k): i + 1]) / len(v[max(0, i - k): i + 1]) for i in range(len(v))]


def plot_loss(history, path: Path) -> None:
    """Each loss term's curve (log scale when all are positive) as a PNG, written atomically."""
    if not history:
        return

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _series(history)
    several = len(series) > 1
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    legend = False
    for i, (name, (s, v)) in enumerate(series.items()):
        color = f"C{i}"
        ax.plot(s, v, lw=1, color=color, alpha=0.5 if several else 1.0,
                label=name if several else None)
        if len(v) > 8:
            k = max(2, len(v) // 20)
            # several terms: each term's running mean in its own colour, labelled once
            ax.plot(s, _running_mean(v, k), lw=2, color=f"C{i + 1}" if not several else color,
                    label=None if several else f"running mean ({k})")
        legend = legend or several or len(v) > 8
    if legend:
        ax.legend()
    if all(x > 0 for _, v in series.values() for x in v):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(next(iter(series)) if not several else "loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


__all__ = ["train", "TrainResult", "TrainingInterrupted", "save_train_state", "read_train_state",
           "trained_state", "lr_at", "ema_decay_at", "plot_loss", "STATE_FILE"]
