"""Integrations with other libraries (imported on demand; nothing here imports diffusers).

* :mod:`specdiff.integrations.diffusers`: ``SpectralPipeline.from_pipe(pipe)`` for
  FLUX.1, SD3/SD3.5, SDXL and Wan 2.1 pipelines (docs/diffusers.md).
* :mod:`specdiff.integrations.vae_spectrum`: ``encode_images`` for ``specdiff analyze --vae``.
* :mod:`specdiff.integrations.unipc`: UniPC as a specdiff ``Solver``.
* :mod:`specdiff.integrations.generate`: what ``specdiff generate`` does (prompts, seeds,
  shards, resume records, the run) as library functions.
* :mod:`specdiff.integrations.tiny`: tiny random-weight pipelines for tests and trials.
"""
