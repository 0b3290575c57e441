"""``specdiff generate``: a locally stored diffusers pipeline with progressive sampling.

A thin argparse layer over :mod:`specdiff.integrations.generate`, which holds
the policies: one process or many (under ``torchrun --nproc_per_node N -m
specdiff generate ...`` rank ``r`` takes the prompts ``i % N == r``), prompt
``i``'s seed (``--seed + i`` or its JSONL record's ``seed``, whatever the number
of ranks; sample ``j`` adds ``1000003 j``) and the resume records (a prompt whose
``NNNNNN.json`` exists is skipped).
"""

from __future__ import annotations

import argparse

from ._args import floats as _floats
from ._args import size as _size
from ._args import steps as _steps


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
    p.add_argument("--spectrum", type=_spectrum, default=None,
                   help="flux | wan | A,beta (default: the family's known VAE constants)")
    p.add_argument("--transition", default="dct", choices=("dct", "fft", "haar"))
    p.add_argument("--positions", default="native", choices=("native", "stretched"))
    p.add_argument("--solver", default="auto",
                   help="auto (the pipeline's scheduler) | euler | heun | dpmpp_2m | unipc")
    p.add_argument("--steps", type=_steps, default=None, help="num_inference_steps")
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


def _spectrum(text: str):
    """``--spectrum``: a name (``flux``, ``wan``) or ``A,beta``."""
    if "," not in text:
        return text
    vals = _floats(text)
    if len(vals) != 2:
        raise argparse.ArgumentTypeError(f"--spectrum A,beta needs two numbers, got {text!r}")
    return tuple(vals)


def cmd_generate(args) -> int:
    from ..integrations.generate import GenerateConfig, read_prompts, run

    cfg = GenerateConfig(
        pipeline=args.pipeline, out=args.out, scales=tuple(args.scales),
        delta=args.delta[0] if len(args.delta) == 1 else tuple(args.delta),
        spectrum=args.spectrum, transition=args.transition, positions=args.positions,
        solver=args.solver, steps=args.steps, guidance=args.guidance, size=args.size,
        frames=args.frames, per_prompt=args.per_prompt, seed=args.seed,
        negative_prompt=args.negative_prompt, dtype=args.dtype, device=args.device,
        fps=args.fps)
    prompts = read_prompts(args.prompt) if args.prompt else read_prompts(path=args.prompts)
    s = run(cfg, prompts)
    print(f"rank {s.rank}/{s.world}: generated {s.generated}, skipped {s.skipped} existing, of "
          f"{s.assigned} prompts (out of {s.total}) -> {args.out}", flush=True)
    return 0
