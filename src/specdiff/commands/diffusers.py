"""``specdiff generate``: a locally stored diffusers pipeline with progressive sampling.

One process or many: under ``torchrun --nproc_per_node N -m specdiff generate ...``
each rank takes the prompts ``i`` with ``i % N == rank`` (gloo on CPU, nccl on
GPU), so every prompt is generated exactly once. Prompt ``i`` always uses seed
``--seed + i`` (or the ``seed`` of its JSONL record), whatever the number of
ranks; image ``j`` of a prompt uses ``seed + 1000003 * j``. Outputs are written
atomically and a prompt whose ``NNNNNN.json`` record exists is skipped, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time

from ..cli import CLIError
from ..fileio import atomic_write, atomic_write_json
from ._args import floats as _floats
from ._args import size as _size


def register(sub) -> None:
    p = sub.add_parser(
        "generate", help="run a local diffusers pipeline (FLUX, SD3, SDXL, Wan) with SPD",
        description="Generate images/videos with a locally stored diffusers pipeline and "
        "progressive (SPD) sampling. Shards prompts across torchrun ranks; resumable.")
    p.add_argument("--pipeline", required=True,
                   help="local diffusers pipeline folder (save_pretrained output or a snapshot)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    src.add_argument("--prompts", help="text file with one prompt per line (blank lines and "
                     "'#' lines skipped), or .jsonl records {\"prompt\", \"negative_prompt\", "
                     "\"seed\"}")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--scales", type=_floats, default=[0.5, 1.0],
                   help="stage scales ending at 1 (default 0.5,1; '1' = the plain pipeline)")
    p.add_argument("--delta", type=_floats, default=[0.01],
                   help="SPD tolerance, one value or one per transition (default 0.01)")
    p.add_argument("--spectrum", default=None,
                   help="flux | wan | A,beta (default: the family's known VAE constants)")
    p.add_argument("--transition", default="dct", choices=("dct", "fft", "haar"))
    p.add_argument("--positions", default="native", choices=("native", "stretched"))
    p.add_argument("--solver", default="auto",
                   help="auto (the pipeline's scheduler) | euler | heun | dpmpp_2m | unipc")
    p.add_argument("--steps", type=int, default=None, help="num_inference_steps")
    p.add_argument("--guidance", type=float, default=None, help="guidance_scale")
    p.add_argument("--size", type=_size, default=None, help="HxW in pixels")
    p.add_argument("--frames", type=int, default=None, help="video frames (Wan, 4k+1)")
    p.add_argument("--per-prompt", type=int, default=1, help="images (videos) per prompt")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="auto: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (cuda:LOCAL_RANK)")
    p.add_argument("--fps", type=int, default=16, help="frame rate of video GIFs")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_generate)


# ----------------------------------------------------------------------------


def read_prompts(args) -> list[dict]:
    """Prompt records ``{"prompt", "negative_prompt", "seed"}`` in file order."""
    if args.prompt:
        recs = [{"prompt": t} for t in args.prompt]
    else:
        path = args.prompts
        if not os.path.isfile(path):
            raise FileNotFoundError(f"prompt file not found: {path}")
        recs = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line or (line.startswith("#") and not path.endswith(".jsonl")):
                    continue
                if path.endswith(".jsonl"):
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise CLIError(f"{path}:{n}: not JSON ({e})") from None
                    if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
                        raise CLIError(f"{path}:{n}: each record needs a string 'prompt'")
                    recs.append(rec)
                else:
                    recs.append({"prompt": line})
    if not recs:
        raise CLIError("no prompts given")
    return recs


def shard(n: int, rank: int, world: int) -> list[int]:
    """Indices of the prompts rank ``rank`` of ``world`` generates: ``i % world == rank``."""
    return [i for i in range(n) if i % world == rank]



def _spectrum(text):
    if text is None:
        return None
    if "," in text:
        vals = _floats(text)
        if len(vals) != 2:
            raise CLIError(f"--spectrum A,beta needs two numbers, got {text!r}")
        return tuple(vals)
    return text


def _dist_env() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def cmd_generate(args) -> int:
    import torch
    from tqdm.auto import tqdm

    if not os.path.isdir(args.pipeline):
        raise FileNotFoundError(f"pipeline folder not found: {args.pipeline} (a local folder "
                                "written by save_pretrained or a downloaded snapshot)")
    if args.per_prompt < 1:
        raise CLIError("--per-prompt must be at least 1")
    prompts = read_prompts(args)
    rank, world, local_rank = _dist_env()
    if args.device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    else:
        device = args.device
        if device == "cuda" and world > 1:
            device = f"cuda:{local_rank}"
    dist = None
    if world > 1:
        import datetime

        import torch.distributed as dist

        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60))
    try:
        return _generate(args, prompts, rank, world, device, tqdm)
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()


def _generate(args, prompts, rank, world, device, tqdm) -> int:
    import inspect

    import numpy as np
    import torch
    from diffusers import DiffusionPipeline
    from PIL import Image

    from ..integrations.diffusers import SpectralPipeline

    if rank != 0:  # one set of loading bars is enough
        from diffusers.utils import logging as dlog

        dlog.disable_progress_bar()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
             "auto": torch.bfloat16 if device.startswith("cuda") else torch.float32}[args.dtype]
    pipe = DiffusionPipeline.from_pretrained(args.pipeline, dtype=dtype,
                                             local_files_only=True)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    sp = SpectralPipeline.from_pipe(pipe)
    params = inspect.signature(type(pipe).__call__).parameters
    video = "num_frames" in params
    per_key = "num_videos_per_prompt" if "num_videos_per_prompt" in params \
        else "num_images_per_prompt"
    os.makedirs(args.out, exist_ok=True)
    delta = args.delta[0] if len(args.delta) == 1 else tuple(args.delta)
    spd = dict(scales=tuple(args.scales), delta=delta, spectrum=_spectrum(args.spectrum),
               transition=args.transition, positions=args.positions, solver=args.solver)
    mine = shard(len(prompts), rank, world)
    done = skipped = 0
    bar = tqdm(mine, desc=f"rank {rank}" if world > 1 else "generate", disable=rank != 0)
    for i in bar:
        meta_path = os.path.join(args.out, f"{i:06d}.json")
        if os.path.exists(meta_path):
            skipped += 1
            continue
        rec = prompts[i]
        seed = int(rec.get("seed", args.seed + i))
        k = args.per_prompt
        gens = [torch.Generator().manual_seed(seed + 1000003 * j) for j in range(k)]
        call = {"prompt": rec["prompt"], per_key: k, "generator": gens,
                "output_type": "np" if video else "pil"}
        neg = rec.get("negative_prompt", args.negative_prompt)
        if neg is not None:
            call["negative_prompt"] = neg
        if args.steps is not None:
            call["num_inference_steps"] = args.steps
        if args.guidance is not None:
            call["guidance_scale"] = args.guidance
        if args.size is not None:
            call["height"], call["width"] = args.size
        if args.frames is not None:
            if not video:
                raise CLIError("--frames is for video pipelines (Wan)")
            call["num_frames"] = args.frames
        t0 = time.perf_counter()
        out = sp(**call, **spd)
        seconds = time.perf_counter() - t0
        files = []
        items = out.frames if video else out.images
        for j in range(k):
            name = f"{i:06d}" + (f"_{j}" if k > 1 else "") + (".gif" if video else ".png")
            path = os.path.join(args.out, name)
            if video:
                frames = [Image.fromarray((np.clip(f, 0, 1) * 255).round().astype(np.uint8))
                          for f in np.asarray(items[j])]
                atomic_write(path, lambda tmp, fr=frames: fr[0].save(
                    tmp, format="GIF", save_all=True, append_images=fr[1:],
                    duration=int(1000 / args.fps), loop=0))
            else:
                atomic_write(path, lambda tmp, im=items[j]: im.save(tmp, format="PNG"))
            files.append(name)
        # the record is written last: its presence marks the prompt as done (resume)
        atomic_write_json(meta_path, {"index": i, "prompt": rec["prompt"], "negative_prompt": neg,
                                "seed": seed, "seeds": [seed + 1000003 * j for j in range(k)],
                                "files": files, "rank": rank, "world_size": world,
                                "seconds": round(seconds, 3), "pipeline": args.pipeline,
                                **{k2: (list(v) if isinstance(v, tuple) else v)
                                   for k2, v in spd.items()}})
        done += 1
    print(f"rank {rank}/{world}: generated {done}, skipped {skipped} existing, of "
          f"{len(mine)} prompts (out of {len(prompts)}) -> {args.out}", flush=True)
    return 0
