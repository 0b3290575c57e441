"""Cost of the automatic VAE spectrum fit (``spectrum=None`` on SD3, SDXL, other VAEs): the
first call, a new process reading the disk cache, and later calls in the process, on an
SD3.5-architecture VAE with random weights. Wall clock and process CPU time, 2 threads.

Usage: python benchmarks/auto_spectrum_cost.py 1024   (the call's side in pixels)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time


def main(side: int) -> None:
    os.environ["SPECDIFF_CACHE_DIR"] = tempfile.mkdtemp()  # a fresh cache, not the user's
    import torch
    from diffusers import AutoencoderKL

    from specdiff.integrations import auto_spectrum as auto

    torch.set_num_threads(2)
    torch.manual_seed(0)
    # SD3.5's VAE architecture: 4 levels of 128..512 channels, 16 latent channels
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
        layers_per_block=2, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609,
        use_quant_conv=False, use_post_quant_conv=False).eval()
    t0, c0 = time.perf_counter(), time.process_time()
    spec = auto.auto_spectrum(vae, side, side, progress=False)
    t1, c1 = time.perf_counter(), time.process_time()
    auto.auto_spectrum(vae, side, side, progress=False)
    t2 = time.perf_counter()
    auto._MEMO.clear()  # as a new process: the weights are hashed, the file is read
    t3 = time.perf_counter()
    auto.auto_spectrum(vae, side, side, progress=False)
    t4 = time.perf_counter()
    print(f"side {side}: first call {t1 - t0:.1f} s wall ({c1 - c0:.1f} s CPU); disk cache "
          f"(weights hashed) {t4 - t3:.2f} s; later calls {1e3 * (t2 - t1):.2f} ms; "
          f"A={spec.A:.4g} beta={spec.beta:.3f} (random weights: not a real VAE's spectrum)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1024)
