"""Batch generation with a locally stored diffusers pipeline: prompts, seeds, shards, resume.

What ``specdiff generate`` does, as library functions (the command only parses
arguments into a :class:`GenerateConfig` and calls :func:`run`):

* Prompts: :func:`read_prompts` reads ``--prompt`` strings or a prompt file
  (one per line, blank and ``#`` lines skipped; or ``.jsonl`` records
  ``{"prompt", "negative_prompt", "seed"}``) into records, in file order.
* Seeds (:func:`prompt_seed`, :func:`sample_seeds`): prompt ``i`` uses seed
  ``base_seed + i`` unless its record gives ``seed``; sample ``j`` of a prompt
  uses ``seed + SAMPLE_SEED_STRIDE * j``. A seed depends only on the prompt's
  index and record, never on the rank or the number of ranks, so a sharded run
  draws the same images as one process.
* Shards (:func:`shard`): rank ``r`` of ``N`` takes the prompts ``i % N == r``.
* Resume (:class:`OutputFolder`): prompt ``i`` writes its files and then its
  record ``NNNNNN.json``, each atomically; a prompt whose record exists is done
  and is skipped on a rerun, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..fileio import atomic_write, atomic_write_json, check_output_dir

__all__ = ["GenerateConfig", "GenerateSummary", "OutputFolder", "SAMPLE_SEED_STRIDE",
           "read_prompts", "prompt_seed", "sample_seeds", "shard", "dist_env",
           "resolve_device", "check_pipeline_folder", "check_generate_config", "generate", "run"]

#: sample ``j`` of a prompt with seed ``s`` uses ``s + SAMPLE_SEED_STRIDE * j`` (a prime far
#: above any prompt count, so samples of prompt ``i`` do not reuse prompt ``i + j``'s seed)
SAMPLE_SEED_STRIDE = 1000003

_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class GenerateConfig:
    """Everything a generate run needs, as plain values (the CLI fills it from its flags).

    ``None`` for ``steps``, ``guidance``, ``size`` (``(height, width)`` pixels) and
    ``frames`` leaves the pipeline's own default. ``scales``, ``delta``,
    ``spectrum``, ``transition``, ``positions`` and ``solver`` are
    :class:`~specdiff.integrations.diffusers.SpectralPipeline`'s arguments.
    """

    pipeline: str
    out: str
    scales: tuple[float, ...] = (0.5, 1.0)
    delta: float | tuple[float, ...] = 0.01
    spectrum: str | tuple[float, float] | None = None
    transition: str = "dct"
    positions: str = "native"
    solver: str = "auto"
    steps: int | None = None
    guidance: float | None = None
    size: tuple[int, int] | None = None
    frames: int | None = None
    per_prompt: int = 1
    seed: int = 0
    negative_prompt: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    fps: int = 16

    def __post_init__(self):
        if int(self.per_prompt) < 1:
            raise ValueError(f"per_prompt (--per-prompt) must be at least 1, got {self.per_prompt}")
        if int(self.fps) < 1:
            raise ValueError(f"fps must be at least 1, got {self.fps}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.steps is not None:
            from ..analysis.schedule import check_steps

            check_steps(self.steps, "steps (--steps)")
        self._check_spd()
        if self.size is not None:
            from ..spectral import as_shape

            size = as_shape(self.size, "size (--size)")
            if len(size) != 2:
                raise ValueError(f"size (--size) is (height, width) in pixels, got {self.size}")
        g = self.guidance
        if g is not None and (isinstance(g, bool) or not isinstance(g, int | float)
                              or not math.isfinite(g)):
            raise ValueError(f"guidance (--guidance) must be a finite number, got {g!r}")
        f = self.frames
        if f is not None and (isinstance(f, bool) or not isinstance(f, int) or f < 1):
            raise ValueError(f"frames (--frames) must be a positive integer (4k+1 for Wan), "
                             f"got {f!r}")

    def _check_spd(self) -> None:
        """The SPD arguments, as :class:`~specdiff.integrations.diffusers.SpectralPipeline`
        would check them on its first call (after the pipeline loaded, minutes later)."""
        from ..plans import check_delta, check_scales, get_spectrum
        from ..solvers import SOLVERS
        from ..transitions import as_transition

        scales = check_scales(self.scales)
        if len(scales) > 1:
            check_delta(self.delta, len(scales) - 1)
        if self.spectrum is not None:
            get_spectrum(self.spectrum)
        as_transition(self.transition)
        if self.positions not in ("native", "stretched"):
            raise ValueError(f"positions (--positions) must be 'native' or 'stretched', got "
                             f"{self.positions!r}")
        solvers = ("auto", "unipc", *sorted(SOLVERS))
        if self.solver not in solvers:
            raise ValueError(f"solver (--solver) must be one of {', '.join(solvers)}; got "
                             f"{self.solver!r}")

    def spd_arguments(self) -> dict:
        """The SPD keyword arguments of every ``SpectralPipeline`` call of the run."""
        return dict(scales=tuple(self.scales), delta=self.delta, spectrum=self.spectrum,
                    transition=self.transition, positions=self.positions, solver=self.solver)


@dataclass(frozen=True)
class GenerateSummary:
    """What one rank did: prompts generated, prompts skipped (already done), prompts
    assigned to it, prompts in the whole list."""

    rank: int
    world: int
    generated: int
    skipped: int
    assigned: int
    total: int


# ---------------------------------------------------------------------------- prompts


def read_prompts(prompts: Sequence[str] | None = None, path: str | None = None) -> list[dict]:
    """Prompt records ``{"prompt", ["negative_prompt"], ["seed"]}`` in order.

    Give ``prompts`` (strings, used as they are) or ``path``: a text file with one
    prompt per line (blank lines and lines starting with ``#`` skipped) or a
    ``.jsonl`` file with one JSON object per line, each with a string ``prompt``.
    """
    if (prompts is None) == (path is None):
        raise ValueError("give either prompts (a list of strings) or path (a prompt file)")
    if prompts is not None:
        recs = [{"prompt": str(p)} for p in prompts]
    else:
        recs = _read_prompt_file(path)
    if not recs:
        raise ValueError("no prompts given (the list or file is empty)")
    return recs


def _read_prompt_file(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompt file not found: {path}")
    jsonl = path.endswith(".jsonl")
    recs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            # '#' starts a comment in text files only: in JSONL a line is a record
            if not line or (line.startswith("#") and not jsonl):
                continue
            recs.append(_jsonl_record(line, path, n) if jsonl else {"prompt": line})
    return recs


def _jsonl_record(line: str, path: str, n: int) -> dict:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not JSON ({e}); write one JSON object per line") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
        raise ValueError(f"{path}:{n}: each record needs a string 'prompt', e.g. "
                         '{"prompt": "a cat", "seed": 3}')
    if "seed" in rec and not (isinstance(rec["seed"], int) and not isinstance(rec["seed"], bool)):
        raise ValueError(f"{path}:{n}: 'seed' must be an integer, got {rec['seed']!r}")
    return rec


# ---------------------------------------------------------------------------- seeds, shards


def prompt_seed(record: Mapping, index: int, base_seed: int) -> int:
    """The seed of prompt ``index``: its record's ``seed`` if given, else ``base_seed + index``."""
    if "seed" in record:
        return int(record["seed"])
    return int(base_seed) + int(index)


def sample_seeds(seed: int, count: int) -> list[int]:
    """Seeds of the ``count`` samples of a prompt with seed ``seed``: ``seed + SAMPLE_SEED_STRIDE j``."""
    if count < 1:
        raise ValueError(f"a prompt needs at least one sample, got count={count}")
    return [int(seed) + SAMPLE_SEED_STRIDE * j for j in range(count)]


def shard(n: int, rank: int, world: int) -> list[int]:
    """Indices of the prompts rank ``rank`` of ``world`` generates: ``i % world == rank``."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world) with world >= 1, got rank={rank}, "
                         f"world={world}")
    return list(range(rank, n, world))


def dist_env(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` as torchrun sets them (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``); one process when they are absent."""
    env = os.environ if environ is None else environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def resolve_device(choice: str, world: int, local_rank: int, cuda_available: bool) -> str:
    """The torch device of this rank: ``"auto"`` is ``cuda:LOCAL_RANK`` when CUDA is there and
    ``cpu`` otherwise; a plain ``"cuda"`` under several ranks becomes ``cuda:LOCAL_RANK`` so
    that ranks do not share one GPU."""
    if choice == "auto":
        return f"cuda:{local_rank}" if cuda_available else "cpu"
    if choice == "cuda" and world > 1:
        return f"cuda:{local_rank}"
    return choice


# ---------------------------------------------------------------------------- resume records


@dataclass(frozen=True)
class OutputFolder:
    """The output folder of a run: prompt ``i``'s files ``NNNNNN[_j].png|gif`` and its record
    ``NNNNNN.json``. The record is written last, so its presence means the prompt is done."""

    root: str

    def record_path(self, index: int) -> str:
        return os.path.join(self.root, f"{index:06d}.json")

    def done(self, index: int) -> bool:
        """Whether prompt ``index`` has its record (its files were written before it)."""
        return os.path.exists(self.record_path(index))

    def pending(self, indices: Sequence[int]) -> list[int]:
        """The prompts among ``indices`` that still need generating, in order."""
        return [i for i in indices if not self.done(i)]

    @staticmethod
    def file_names(index: int, count: int, video: bool) -> list[str]:
        """File names of prompt ``index``'s ``count`` samples (a ``_j`` suffix when several)."""
        ext = ".gif" if video else ".png"
        if count == 1:
            return [f"{index:06d}{ext}"]
        return [f"{index:06d}_{j}{ext}" for j in range(count)]

    def write_record(self, index: int, record: Mapping) -> None:
        """Mark prompt ``index`` done: write its record atomically (after its files)."""
        atomic_write_json(self.record_path(index), dict(record))


# ---------------------------------------------------------------------------- the run


def _pipeline_call(cfg: GenerateConfig, record: Mapping, seeds: Sequence[int], video: bool,
                   per_key: str) -> dict:
    """The pipeline arguments of one prompt (generators on the CPU: seeds are device-free)."""
    import torch

    call = {"prompt": record["prompt"], per_key: len(seeds),
            "generator": [torch.Generator().manual_seed(s) for s in seeds],
            "output_type": "np" if video else "pil"}
    neg = record.get("negative_prompt", cfg.negative_prompt)
    if neg is not None:
        call["negative_prompt"] = neg
    if cfg.steps is not None:
        call["num_inference_steps"] = cfg.steps
    if cfg.guidance is not None:
        call["guidance_scale"] = cfg.guidance
    if cfg.size is not None:
        call["height"], call["width"] = cfg.size
    if cfg.frames is not None:
        if not video:
            raise ValueError("frames (--frames) is for video pipelines (Wan); leave it out")
        call["num_frames"] = cfg.frames
    return call


def _save(path: str, item, video: bool, fps: int) -> None:
    import numpy as np
    from PIL import Image

    if video:
        frames = [Image.fromarray((np.clip(f, 0, 1) * 255).round().astype(np.uint8))
                  for f in np.asarray(item)]
        atomic_write(path, lambda tmp: frames[0].save(
            tmp, format="GIF", save_all=True, append_images=frames[1:],
            duration=int(1000 / fps), loop=0))
    else:
        atomic_write(path, lambda tmp: item.save(tmp, format="PNG"))


def check_pipeline_folder(path: str) -> None:
    """A ``ValueError`` / ``FileNotFoundError`` unless ``path`` is a local diffusers pipeline
    folder (one with ``model_index.json``); reads nothing else, loads nothing."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"pipeline folder not found: {path} (a local folder "
                                "written by save_pretrained or a downloaded snapshot)")
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise ValueError(f"{path} is not a diffusers pipeline folder (no model_index.json); give "
                         "the folder written by pipe.save_pretrained or a downloaded snapshot")


def _folder_json(path: str, name: str) -> dict:
    """The JSON object in ``path/name`` (``{}`` if there is none); a ValueError if unreadable."""
    file = os.path.join(path, name)
    if not os.path.isfile(file):
        return {}
    try:
        with open(file) as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}); re-copy the pipeline folder") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{file} is not a JSON object; re-copy the pipeline folder")
    return obj


def _adapter_of_class_name(folder: str, name):
    """The family adapter of the pipeline class called ``name``; a ValueError if there is none.

    A class an adapter names is matched without importing it; any other class is looked up
    in diffusers (a subclass of a supported pipeline is supported), with the libraries'
    import-time warnings silenced: the error is the one line the user needs.
    """
    from .families import adapters, find_adapter_for_class

    for a in adapters():
        if name in a.pipeline_classes:
            return a
    import diffusers
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        cls = getattr(diffusers, str(name), None) if isinstance(name, str) and name else None
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
    if not isinstance(cls, type):
        raise ValueError(f"{folder}/model_index.json names pipeline class {name!r}, which "
                         f"diffusers {diffusers.__version__} does not have; re-copy the folder or "
                         "update diffusers")
    return find_adapter_for_class(cls)


def check_generate_config(cfg: GenerateConfig) -> None:
    """Everything the arguments and the pipeline folder's JSON files decide, checked before
    the pipeline loads (minutes for a real model) and before anything is written.

    From ``model_index.json``: the pipeline class (one ``SpectralPipeline`` supports),
    whether it makes videos (``frames`` is refused on an image pipeline) and its
    ``positions``; from ``vae/``, ``transformer/`` and ``unet/``
    ``config.json``: the latent grid of ``size`` (or the pipeline's default size), and that
    every coarse stage of ``scales`` fits the family's packing. The same checks run again
    on the loaded pipeline, so a folder without some configs is still checked in full then.
    """
    from .diffusers import check_stage_sizes

    check_pipeline_folder(cfg.pipeline)
    index = _folder_json(cfg.pipeline, "model_index.json")
    name = index.get("_class_name")
    adapter = _adapter_of_class_name(cfg.pipeline, name)
    if cfg.frames is not None and adapter.output_field != "frames":
        raise ValueError(f"frames (--frames) is for video pipelines (Wan); {name} makes images: "
                         "leave it out")
    if cfg.positions not in adapter.positions_supported:
        raise ValueError(f"{adapter.family}: positions (--positions) must be one of "
                         f"{adapter.positions_supported}, got {cfg.positions!r}")
    scales = tuple(float(s) for s in cfg.scales)
    if scales == (1.0,):
        return
    layout = adapter.folder_layout(lambda sub: _folder_json(cfg.pipeline, f"{sub}/config.json"))
    size = cfg.size if cfg.size is not None else (layout.default_size if layout else None)
    if layout is None or size is None:
        return
    grid = layout.latent_grid(*size)
    if min(grid) < 1:
        raise ValueError(f"size {size[0]}x{size[1]} is smaller than one latent cell "
                         f"({layout.vae_factor} pixels); give a larger --size")
    check_stage_sizes(adapter.family, adapter.packing, layout.multiple, layout.vae_factor, grid,
                      scales)


def load_pipeline(cfg: GenerateConfig, device: str):
    """The pipeline in ``cfg.pipeline`` (a local folder; nothing is downloaded) on ``device``,
    in ``cfg.dtype`` (``auto``: bfloat16 on CUDA, float32 otherwise)."""
    import torch
    from diffusers import DiffusionPipeline

    check_pipeline_folder(cfg.pipeline)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
             "auto": torch.bfloat16 if device.startswith("cuda") else torch.float32}[cfg.dtype]
    pipe = DiffusionPipeline.from_pretrained(cfg.pipeline, dtype=dtype, local_files_only=True)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(cfg: GenerateConfig, prompts: Sequence[Mapping], *, rank: int = 0, world: int = 1,
             device: str = "cpu", pipe=None, progress: bool = True) -> GenerateSummary:
    """Generate this rank's share of ``prompts`` into ``cfg.out``, skipping prompts already done.

    ``pipe``: an already loaded pipeline (default: :func:`load_pipeline`). Each prompt's
    files are written, then its record (prompt, seeds, files, rank, SPD settings, seconds).
    """
    import inspect

    from tqdm.auto import tqdm

    from .diffusers import SpectralPipeline

    if pipe is None:
        check_generate_config(cfg)
    check_output_dir(cfg.out, "the output folder (--out)")
    if pipe is None:
        pipe = load_pipeline(cfg, device)
    sp = SpectralPipeline.from_pipe(pipe)
    params = inspect.signature(type(pipe).__call__).parameters
    video = "num_frames" in params
    per_key = "num_videos_per_prompt" if "num_videos_per_prompt" in params \
        else "num_images_per_prompt"
    folder = OutputFolder(cfg.out)
    os.makedirs(cfg.out, exist_ok=True)
    spd = cfg.spd_arguments()
    mine = shard(len(prompts), rank, world)
    todo = folder.pending(mine)
    bar = tqdm(todo, desc=f"rank {rank}" if world > 1 else "generate",
               disable=not progress or rank != 0)
    for i in bar:
        rec = prompts[i]
        seed = prompt_seed(rec, i, cfg.seed)
        seeds = sample_seeds(seed, cfg.per_prompt)
        call = _pipeline_call(cfg, rec, seeds, video, per_key)
        t0 = time.perf_counter()
        out = sp(**call, **spd)
        seconds = time.perf_counter() - t0
        items = out.frames if video else out.images
        names = folder.file_names(i, len(seeds), video)
        for name, item in zip(names, items, strict=True):
            _save(os.path.join(cfg.out, name), item, video, cfg.fps)
        folder.write_record(i, {
            "index": i, "prompt": rec["prompt"], "negative_prompt": call.get("negative_prompt"),
            "seed": seed, "seeds": seeds, "files": names, "rank": rank, "world_size": world,
            "seconds": round(seconds, 3), "pipeline": cfg.pipeline,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in spd.items()}})
    return GenerateSummary(rank, world, len(todo), len(mine) - len(todo), len(mine), len(prompts))


def run(cfg: GenerateConfig, prompts: Sequence[Mapping]) -> GenerateSummary:
    """:func:`generate` in this process's place of a torchrun job (or alone): picks the
    device, joins the process group (gloo on CPU, nccl on CUDA) and leaves it afterwards."""
    import torch

    rank, world, local_rank = dist_env()
    device = resolve_device(cfg.device, world, local_rank, torch.cuda.is_available())
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this machine has no CUDA GPU "
                         "(torch.cuda.is_available() is False); use --device cpu or auto")
    check_generate_config(cfg)
    check_output_dir(cfg.out, "the output folder (--out)")
    dist = None
    if world > 1:
        import datetime

        import torch.distributed as dist

        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60))
    try:
        if rank != 0:  # one set of loading bars is enough
            from diffusers.utils import logging as dlog

            dlog.disable_progress_bar()
        # checked above: load here, so generate() does not read the folder's configs again
        return generate(cfg, prompts, rank=rank, world=world, device=device,
                        pipe=load_pipeline(cfg, device))
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()
