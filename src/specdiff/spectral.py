"""Spectral transforms and the exact flow-state resize (DESIGN.md section 3).

Frame: rectified flow, ``x_t = (1 - t) x0 + t eps`` with ``t = 1`` pure noise.
Tensors are ``(B, C, *grid)``; ``grid`` is ``(H, W)`` for images and
``(T, H, W)`` for video. Every transform here is orthonormal, runs in float32
or float64 through torch (CPU or CUDA) and never touches scipy.

The central fact (SPD, paper Eq. 5-6): embedding a flow state into a grid with
``rho**2`` times more elements through an orthonormal transform keeps the noise
white with variance ``t**2`` but shrinks the signal by ``1 / rho``. Filling the
new frequency bins with ``t * noise`` and multiplying by
``kappa = rho / (1 + (rho - 1) t)`` gives an exact flow state at
``t_new = rho t / (1 + (rho - 1) t)``, the SD3 resolution shift with factor rho.
Truncation is the same formula with ``rho < 1``.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from functools import lru_cache

import torch

Generator = torch.Generator | Sequence[torch.Generator] | None

SPECTRAL_BASES = ("dct", "fft", "haar")
"""Orthonormal bases of the flow-state resize (and of seed-coupled noise)."""

RESIZE_BASES = (*SPECTRAL_BASES, "pyramid")
"""Everything :func:`resize` accepts: the spectral bases plus Pyramid Flow's pixel-domain jump."""


# ---------------------------------------------------------------------------
# small helpers shared by the whole package
# ---------------------------------------------------------------------------


def resolution_shift(t, rho):
    """``rho t / (1 + (rho - 1) t)``: SPD's timestep alignment (paper Eq. 6).

    The same function as the SD3 resolution shift with factor ``rho``; shifts
    compose multiplicatively (``shift_a(shift_b(t)) = shift_ab(t)``).
    Works on floats and tensors.
    """
    return rho * t / (1 + (rho - 1) * t)


def expansion_gain(t, rho):
    """``kappa = rho / (1 + (rho - 1) t)``: the factor that makes a resized flow state exact
    (SPD Eq. 5-6; the signal shrinks by ``1 / rho`` in an orthonormal embed, the noise does
    not). Floats or tensors; the closed-form testbed uses the same function."""
    return rho / (1 + (rho - 1) * t)


def broadcast_time(t, x: torch.Tensor):
    """``t`` shaped to broadcast against ``x`` by rank: the one place this is done.

    A ``(B,)`` tensor becomes ``(B, 1, ..., 1)`` (``x.ndim`` dims) in ``x``'s dtype and
    device, so one time per sample works for images and video alike; a 0-d tensor
    stays 0-d; a Python float stays a float (solver arithmetic on plain floats is
    done in double precision before it touches the tensor, and that must not change).
    """
    if isinstance(t, torch.Tensor):
        t = t.to(device=x.device, dtype=x.dtype)
        if t.ndim == 0:
            return t
        if t.ndim != 1 or t.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"t must be a float or a (B,) tensor for a batch of {x.shape[0]}, got shape "
                f"{tuple(t.shape)}")
        return t.reshape(-1, *([1] * (x.ndim - 1)))
    return t


def _time_tensor(t, x: torch.Tensor) -> torch.Tensor:
    """``broadcast_time`` as a tensor of ``x``'s dtype (the transforms compute in it)."""
    return torch.as_tensor(broadcast_time(t, x), dtype=x.dtype, device=x.device)


def fresh_noise(
    shape: Sequence[int],
    t,
    *,
    noise: torch.Tensor | None = None,
    generator: Generator = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    what: str = "this transition",
) -> torch.Tensor:
    """The white N(0, 1) noise a transition injects at time ``t``: the one place it is drawn.

    ``noise`` (checked: shape ``shape``, finite) wins; else it is drawn from
    ``generator`` (one, or one per sample: see :func:`make_noise`). With neither,
    a transition that lands at ``t = 0`` gets zeros (it injects nothing) and one at
    ``t > 0`` raises, because the randomness must be chosen by the caller.
    """
    shape = tuple(int(s) for s in shape)
    if noise is not None:
        if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
            # an integer or complex noise tensor would be cast silently (truncated or real part)
            raise ValueError(f"noise must be a float tensor of shape {shape} (white N(0, 1)), got "
                             f"{noise.dtype if isinstance(noise, torch.Tensor) else _describe(noise)}")
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise must have the target shape {shape}, got {tuple(noise.shape)}")
        _check_finite(noise, "noise")
        return noise.to(device=device if device is not None else noise.device, dtype=dtype)
    if generator is not None:
        return make_noise(shape, generator, dtype=dtype, device=device)
    if _any_positive(t):
        raise ValueError(
            f"{what} at t > 0 needs fresh noise: pass noise= (white N(0, 1) of shape {shape}) "
            "or generator=")
    return torch.zeros(shape, dtype=dtype, device=device)


def _describe(value) -> str:
    """``type value`` for error messages, short even for a big object."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def check_generator(generator, name: str = "generator") -> None:
    """Raise ``ValueError`` unless ``generator`` is ``None``, a ``torch.Generator`` or a
    non-empty list/tuple of them (one per sample).

    Checked before any work: an int seed would otherwise reach ``torch.randn`` and fail
    there with an ``AttributeError``, possibly after a whole stage has run.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return
    if (isinstance(generator, list | tuple) and generator
            and all(isinstance(g, torch.Generator) for g in generator)):
        return
    raise ValueError(
        f"{name} must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), a list "
        f"with one per sample, or None; got {_describe(generator)}")


def as_size(value, name: str = "size") -> int:
    """A grid size as an ``int``: integers and whole floats (``16.0``) pass; ``16.7``,
    bools and strings raise ``ValueError`` (``int()`` would silently truncate them)."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
    raise ValueError(f"{name} must be whole numbers (sizes such as 16 or 16.0), got "
                     f"{_describe(value)}")


def sequence_items(value) -> list | None:
    """``list(value)`` for a sequence of values, ``None`` for anything else: a scalar, and a
    string too (it is a sequence, but ``'0.05'`` read character by character is never what
    was meant). The one place argument checks tell "several values" from "one"."""
    if isinstance(value, str | bytes):
        return None
    try:
        return list(value)
    except TypeError:
        return None


def as_shape(shape, name: str = "shape") -> tuple[int, ...]:
    """A target grid as a tuple of ints (see :func:`as_size`); one size per grid axis."""
    items = sequence_items(shape)
    if items is None:
        raise ValueError(f"{name} must be a sequence of sizes, one per grid axis (e.g. (32, 32)), "
                         f"got {_describe(shape)}")
    return tuple(as_size(s, name) for s in items)


def make_noise(
    shape: Sequence[int],
    generator: Generator = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` drawn from ``generator``.

    ``generator`` may be one ``torch.Generator`` for the whole batch or a list
    with one generator per sample (then sample ``i`` depends only on
    ``generator[i]``, whatever the rest of the batch). Drawing is done in
    float32 on the generator's device and cast afterwards, so the same seed
    gives the same noise in float32 and float64 runs.
    """
    shape = tuple(int(s) for s in shape)
    check_generator(generator)
    if isinstance(generator, list | tuple):
        if len(generator) != shape[0]:
            raise ValueError(
                f"got {len(generator)} generators for a batch of {shape[0]}: pass one "
                "generator per sample or a single generator"
            )
        parts = [_randn(shape[1:], g, device) for g in generator]
        out = torch.stack(parts)
    else:
        out = _randn(shape, generator, device)
    return out.to(dtype=dtype, device=device if device is not None else out.device)


def _randn(shape, generator, device):
    gen_device = generator.device if generator is not None else (device or "cpu")
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_finite(x: torch.Tensor, name: str = "x") -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf; check the model output or the input data")


def _check_time(t) -> None:
    if isinstance(t, torch.Tensor):
        if not t.is_floating_point():
            # integer/bool times would be cast to 0 or 1 without a word
            raise ValueError(f"t must be a float or a float tensor in [0, 1], got a {t.dtype} "
                             "tensor; pass t.double()")
        tt = t
    elif isinstance(t, numbers.Real) and not isinstance(t, bool):
        tt = torch.as_tensor(float(t))
    else:
        # float('0.5') would accept a string here and fail later in the arithmetic
        raise ValueError(f"t must be a float in [0, 1] or a (B,) float tensor, got {_describe(t)}")
    if not torch.isfinite(tt).all() or (tt < 0).any() or (tt > 1).any():
        raise ValueError(f"t must lie in [0, 1] (t=1 is pure noise), got {t}")


def _norm_dims(dims: Sequence[int] | int, ndim: int) -> tuple[int, ...]:
    if isinstance(dims, int):
        dims = (dims,)
    out = []
    for d in dims:
        if not -ndim <= d < ndim:
            raise ValueError(f"dim {d} is out of range for a {ndim}-D tensor")
        out.append(d % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"dims {tuple(dims)} repeat an axis")
    return tuple(out)


# ---------------------------------------------------------------------------
# orthonormal DCT-II
# ---------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _dct_matrix_cpu64(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * k * (2 * i + 1) / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


_DCT_CACHE: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def dct_matrix(n: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """The ``(n, n)`` orthonormal DCT-II matrix ``M`` (``X = M x``), built in float64."""
    key = (int(n), dtype, torch.device(device))
    m = _DCT_CACHE.get(key)
    if m is None:
        m = _dct_matrix_cpu64(int(n)).to(dtype=dtype, device=device)
        if len(_DCT_CACHE) > 128:
            _DCT_CACHE.clear()
        _DCT_CACHE[key] = m
    return m


def _apply_along(x: torch.Tensor, dim: int, m: torch.Tensor) -> torch.Tensor:
    # y[..., k, ...] = sum_i m[k, i] x[..., i, ...]
    return torch.movedim(torch.movedim(x, dim, -1) @ m.T, -1, dim)


def dct(x: torch.Tensor, dims: Sequence[int] | int = (-2, -1)) -> torch.Tensor:
    """Orthonormal DCT-II over ``dims`` (equals ``scipy.fft.dctn(x, norm="ortho")``).

    Implemented as a matrix product per axis (matrices built in float64 and
    cached), exact to float rounding on CPU and CUDA. Half-precision input is
    computed in float32.
    """
    wd = _work_dtype(x)
    y = x.to(wd)
    for d in _norm_dims(dims, x.ndim):
        y = _apply_along(y, d, dct_matrix(x.shape[d], wd, x.device))
    return y


def idct(x: torch.Tensor, dims: Sequence[int] | int = (-2, -1)) -> torch.Tensor:
    """Inverse of :func:`dct` (orthonormal DCT-III, ``scipy.fft.idctn(norm="ortho")``)."""
    wd = _work_dtype(x)
    y = x.to(wd)
    for d in _norm_dims(dims, x.ndim):
        y = _apply_along(y, d, dct_matrix(x.shape[d], wd, x.device).T)
    return y


# ---------------------------------------------------------------------------
# 1-D building blocks for the fft and haar bases
# ---------------------------------------------------------------------------


def _fft_split(n: int) -> tuple[int, int, bool]:
    """(number of non-negative bins, number of negative bins, has Nyquist) for length n."""
    if n % 2:
        return (n + 1) // 2, (n - 1) // 2, False
    return n // 2, n // 2 - 1, True


def _fft_resize_axis(x, dim, n_new, noise):
    """Orthonormal Fourier re-gridding along one axis (no kappa).

    Every frequency keeps its own signed bin. Growing an even length, the old
    Nyquist bin (real for real input) is split energy-preservingly over the two
    new ``+-n/2`` bins and their missing sine part is taken from the noise, so
    the padded noise stays white and truncation after expansion is the
    identity. New bins hold the noise's own Fourier coefficients.
    """
    n_old = x.shape[dim]
    X = torch.fft.fft(x, dim=dim, norm="ortho")
    X = torch.movedim(X, dim, -1)
    if n_new > n_old:
        Y = torch.movedim(torch.fft.fft(noise, dim=dim, norm="ortho"), dim, -1).clone()
        pos, neg, nyq = _fft_split(n_old)
        Y[..., :pos] = X[..., :pos]
        if neg:
            Y[..., n_new - neg :] = X[..., n_old - neg :]
        if nyq:
            half = n_old // 2
            xn = X[..., half].real / math.sqrt(2.0)
            for j in (half, n_new - half):
                Y[..., j] = torch.complex(xn, Y[..., j].imag)
    else:
        pos, neg, nyq = _fft_split(n_new)
        Y = X.new_zeros(X.shape[:-1] + (n_new,))
        Y[..., :pos] = X[..., :pos]
        if neg:
            Y[..., n_new - neg :] = X[..., n_old - neg :]
        if nyq:
            half = n_new // 2
            fold = (X[..., half] + X[..., n_old - half]).real / math.sqrt(2.0)
            Y[..., half] = torch.complex(fold, torch.zeros_like(fold))
    Y = torch.movedim(Y, -1, dim)
    return torch.fft.ifft(Y, dim=dim, norm="ortho").real


def _haar_resize_axis(x, dim, n_new, noise):
    """Orthonormal one-level Haar along one axis: grow 2x (detail = noise detail) or shrink 2x."""
    n_old = x.shape[dim]
    s = 1.0 / math.sqrt(2.0)
    if n_new == 2 * n_old:
        ev, od = noise.narrow(dim, 0, n_new).unflatten(dim, (n_old, 2)).unbind(dim + 1)
        high = (ev - od) * s
        out = torch.stack(((x + high) * s, (x - high) * s), dim=dim + 1)
        return out.flatten(dim, dim + 1)
    ev, od = x.unflatten(dim, (n_new, 2)).unbind(dim + 1)
    return (ev + od) * s


def _haar_truncate(x, dim, n_new):
    return _haar_resize_axis(x, dim, n_new, None)


def _fft_truncate(x, dim, n_new):
    return _fft_resize_axis(x, dim, n_new, None)


# ---------------------------------------------------------------------------
# the resize
# ---------------------------------------------------------------------------


def _grid_of(x, name: str = "x") -> tuple[int, ...]:
    """The grid of a ``(B, C, *grid)`` float tensor; ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, C, *grid), got "
                         f"{type(x).__name__}")
    if x.ndim < 3:
        raise ValueError(
            f"{name} must have shape (B, C, *grid) with at least one grid axis, got "
            f"{tuple(x.shape)}")
    if not x.is_floating_point():
        # the result is cast back to x's dtype: an integer/bool x would come back truncated
        # and a complex one would lose its imaginary part
        raise ValueError(f"{name} must be a float tensor, got {x.dtype}; pass {name}.float() "
                         f"(or {name}.real for a complex tensor)")
    return tuple(x.shape[2:])


def _target_shape(shape, grid: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` as a target grid for ``grid``: whole, positive, one size per grid axis."""
    shape = as_shape(shape)
    if len(shape) != len(grid):
        raise ValueError(
            f"target grid {shape} has {len(shape)} axes but the input has grid {grid}; give one "
            "size per grid axis (for video (T, H, W) keep T unchanged)"
        )
    if any(s < 1 for s in shape):
        raise ValueError(f"target grid sizes must be positive, got {shape}")
    return shape


def _validate_resize(x, t, shape, basis):
    grid = _grid_of(x, "x")
    shape = _target_shape(shape, grid)
    if basis not in RESIZE_BASES:
        raise ValueError(f"basis must be one of {RESIZE_BASES}, got {basis!r}")
    if basis == "pyramid":
        doubled = (*grid[:-2], 2 * grid[-2], 2 * grid[-1]) if len(grid) >= 2 else None
        if shape != doubled:
            raise ValueError(
                f"basis='pyramid' (Pyramid Flow's jump) doubles the last two axes: target must be "
                f"{doubled}, got {shape}; use basis='dct' for other ratios")
    if basis == "haar":
        for a, b in zip(grid, shape, strict=True):
            if b != a and b != 2 * a and 2 * b != a:
                raise ValueError(
                    f"basis='haar' changes each axis by exactly 2x, but {grid} -> {shape} does "
                    "not; use basis='dct' for other ratios"
                )
    _check_time(t)
    if isinstance(t, torch.Tensor) and t.ndim == 1 and t.shape[0] != x.shape[0]:
        raise ValueError(f"t has {t.shape[0]} entries for a batch of {x.shape[0]}")
    _check_finite(x)
    return grid, shape


def resize(
    x: torch.Tensor,
    t,
    shape: Sequence[int],
    *,
    noise: torch.Tensor | None = None,
    generator: Generator = None,
    basis: str = "dct",
):
    """Map a flow state on one grid to an exact flow state on another grid.

    Args:
        x: ``(B, C, *grid)`` flow state ``(1 - t) x0 + t eps`` at time ``t``.
        t: float or ``(B,)`` tensor in [0, 1].
        shape: target grid, one size per grid axis; only axes whose size
            changes are transformed (video ``(T, H, W)`` grows ``H, W``).
        noise: ``(B, C, *shape)`` white N(0, 1) tensor whose coefficients (in
            ``basis``) fill the new frequency bins; this is how seed-coupled
            noise is passed. Only the new bins of it are used.
        generator: used to draw ``noise`` when it is not given (one generator
            or one per sample). Growing a grid at ``t > 0`` needs one of the two.
        basis: ``"dct"`` (any ratio), ``"fft"`` (any ratio, every frequency in
            its own bin), ``"haar"`` (exactly 2x per changed axis), ``"pyramid"``
            (Pyramid Flow's nearest-upsample + block-noise jump, exactly 2x on the
            last two axes; equals ``"haar"`` given the same noise).

    Returns:
        ``(x_new, t_new)`` with ``x_new`` of shape ``(B, C, *shape)`` (dtype of
        ``x``; computed in float32 or float64) and ``t_new = rho t / (1 + (rho-1) t)``,
        ``rho = sqrt(N_new / N_old)`` from the actual element counts (SPD Eq. 5-6).
        ``t_new`` is a float if ``t`` was, else a ``(B,)`` tensor.
    """
    grid, shape = _validate_resize(x, t, shape, basis)
    changed = [i for i, (a, b) in enumerate(zip(grid, shape, strict=True)) if a != b]
    # Shrinking axes first: then every axis resized after a growing one grows
    # too, so projecting the target noise onto the intermediate grid is valid.
    changed.sort(key=lambda i: shape[i] > grid[i])
    if not changed:
        return x.clone(), (t.clone() if isinstance(t, torch.Tensor) else float(t))
    dims = [2 + i for i in changed]
    grows = any(shape[i] > grid[i] for i in changed)

    wd = _work_dtype(x)
    xs = x.to(wd)
    full_shape = (x.shape[0], x.shape[1], *shape)
    if grows:
        noise = fresh_noise(full_shape, t, noise=noise, generator=generator, dtype=wd,
                            device=x.device, what="growing a grid")
    if basis == "pyramid":
        return _pyramid_jump(xs, t, noise, x.dtype)

    rho = math.sqrt(math.prod(shape) / math.prod(grid))
    t_b = _time_tensor(t, xs)
    if basis == "dct":
        X = dct(xs, dims)
        if grows:
            Y = dct(noise, dims) * t_b
        else:
            Y = xs.new_zeros(full_shape)
        corner = tuple(slice(0, min(grid[i], shape[i])) for i in range(len(grid)))
        Y[(slice(None), slice(None), *corner)] = X[(slice(None), slice(None), *corner)]
        y = idct(Y, dims)
    else:
        resize_axis = _fft_resize_axis if basis == "fft" else _haar_resize_axis
        truncate = _fft_truncate if basis == "fft" else _haar_truncate
        y = xs
        # One axis at a time: each step is an exact flow-state resize with its own
        # rho, and the shifts compose, so only the noise scale has to follow
        # the running time. The noise for axis d is the target noise projected
        # (in the same basis) onto the old sizes of the axes not yet resized.
        t_run = t_b
        for k, d in enumerate(dims):
            n_new = shape[d - 2]
            nz = None
            if n_new > y.shape[d]:
                nz = noise
                for d_later in dims[k + 1 :]:
                    nz = truncate(nz, d_later, grid[d_later - 2])
                nz = nz * t_run
            rho_d = math.sqrt(n_new / y.shape[d])
            y = resize_axis(y, d, n_new, nz)
            y = y * expansion_gain(t_run, rho_d)
            t_run = resolution_shift(t_run, rho_d)
    if basis == "dct":
        y = y * expansion_gain(t_b, rho)
    t_new = resolution_shift(t, rho)
    if not isinstance(t, torch.Tensor):
        t_new = float(t_new)
    return y.to(x.dtype), t_new


def _any_positive(t) -> bool:
    if isinstance(t, torch.Tensor):
        return bool((t > 0).any())
    return float(t) > 0


def project_noise(noise: torch.Tensor, shape: Sequence[int], basis: str = "dct") -> torch.Tensor:
    """Orthonormal band-limiting of white noise onto a smaller grid (stays white N(0, 1)).

    Seed-coupled sampling draws one full-resolution noise tensor; the coarse
    start and the noise for every later expansion are its projections, so the
    last expansion fills exactly the full-resolution noise's own high band.
    For ``basis="dct"`` and ``"fft"`` this is spectral truncation; for ``"haar"``
    the Haar low band.
    """
    if basis not in SPECTRAL_BASES:
        raise ValueError(f"basis must be one of {SPECTRAL_BASES}, got {basis!r}")
    grid = _grid_of(noise, "noise")
    shape = _target_shape(shape, grid)
    if any(b > a for a, b in zip(grid, shape, strict=True)):
        raise ValueError(f"project_noise only shrinks: {grid} -> {shape}")
    # t = 1 makes kappa = 1 and t_new = 1: a pure orthonormal projection.
    return resize(noise, 1.0, shape, basis=basis)[0]


def _pyramid_jump(x: torch.Tensor, t, noise: torch.Tensor, dtype: torch.dtype):
    """``Up_nn(x) / (1 + t) + t_new (z - blockmean(z))`` on the last two axes (x, z in work dtype)."""
    t_b = _time_tensor(t, x)
    up = x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    pooled = torch.nn.functional.avg_pool2d(noise.flatten(0, -3).unsqueeze(1), 2)
    mean = pooled.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1).reshape(noise.shape)
    t_new_b = 2 * t_b / (1 + t_b)
    y = up / (1 + t_b) + t_new_b * (noise - mean)
    t_new = 2 * t / (1 + t)
    if not isinstance(t, torch.Tensor):
        t_new = float(t_new)
    return y.to(dtype), t_new


def pyramid_renoise(
    x: torch.Tensor,
    t,
    shape: Sequence[int] | None = None,
    *,
    noise: torch.Tensor | None = None,
    generator: Generator = None,
):
    """Pyramidal Flow's jump: nearest 2x upsample plus block noise (gamma = 1/3).

    ``x' = Up_nn(x) / (1 + t) + t_new * (z - blockmean(z))`` with
    ``t_new = 2 t / (1 + t)`` on the last two (spatial) axes. The block noise
    has covariance ``t_new**2 (I - 11^T / 4)`` inside each 2x2 block, which
    cancels the block correlation of the upsampled noise: the result is white
    with variance ``t_new**2`` and equals ``resize(basis="haar")`` given the
    same ``noise`` (Pyramid Flow, arXiv 2410.05954; methods.md section 6.1).
    It is ``resize(x, t, shape, basis="pyramid")``; this name stays for callers.

    Args:
        x: ``(B, C, ..., H, W)`` flow state at ``t``.
        shape: target grid; must be ``(..., 2H, 2W)`` (defaults to it).
        noise: ``(B, C, ..., 2H, 2W)`` white noise ``z``; else drawn from ``generator``.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 4:
        raise ValueError(f"pyramid_renoise needs (B, C, ..., H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    grid = tuple(x.shape[2:])
    if shape is None:
        shape = (*grid[:-2], 2 * grid[-2], 2 * grid[-1])
    return resize(x, t, shape, noise=noise, generator=generator, basis="pyramid")


UPSAMPLE_MODES = ("bicubic", "bilinear", "nearest", *SPECTRAL_BASES)


def upsample(x: torch.Tensor, shape: Sequence[int], mode: str = "bicubic") -> torch.Tensor:
    """Resample a clean image ``(B, C, *grid)`` to ``shape`` keeping its per-pixel amplitude.

    ``mode="dct"`` (or ``"fft"``, ``"haar"``) is the flow-state :func:`resize` at
    ``t = 0``: a band-limited resample, for dct exactly diagonal in the DCT basis;
    the others use ``torch.nn.functional.interpolate`` on each
    2-D frame (shrinking always uses area averaging).
    """
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
    grid = _grid_of(x, "x")
    shape = _target_shape(shape, grid)
    if shape == grid:
        return x.clone()
    if mode in SPECTRAL_BASES:
        # The flow-state resize at t = 0 (nothing to fill: zeros in the new bins);
        # kappa = rho restores the amplitude lost by the orthonormal embed.
        return resize(x, 0.0, shape, basis=mode)[0]
    if grid[:-2] != shape[:-2]:
        raise ValueError(f"mode={mode!r} resamples only the last two axes: {grid} -> {shape}")
    wd = _work_dtype(x)
    frames = x.to(wd).movedim(1, -3).reshape(-1, x.shape[1], grid[-2], grid[-1])
    shrink = shape[-2] <= grid[-2] and shape[-1] <= grid[-1]
    kw = {} if mode == "nearest" or shrink else {"align_corners": False}
    out = torch.nn.functional.interpolate(
        frames, size=shape[-2:], mode="area" if shrink else mode, **kw
    )
    out = out.reshape(x.shape[0], *grid[:-2], x.shape[1], *shape[-2:]).movedim(-3, 1)
    return out.to(x.dtype).contiguous()


def x0_renoise(
    x0_hat: torch.Tensor,
    t_new: float,
    shape: Sequence[int],
    *,
    noise: torch.Tensor | None = None,
    generator: Generator = None,
    mode: str = "bicubic",
) -> torch.Tensor:
    """``(1 - t_new) Up(x0_hat) + t_new * noise``: the x0-renoise transition.

    Used by SwD sampling, the self-cascade pivot, hires-fix and bottleneck
    sampling (methods.md section 7C). The marginal is exact only when the
    upsampled estimate is a true sample of the larger grid, so ``t_new`` must
    be high enough that the missing band is noise-dominated.
    """
    _check_time(t_new)
    _check_finite(x0_hat, "x0_hat")
    up = upsample(x0_hat, shape, mode)
    wd = _work_dtype(up)
    noise = fresh_noise(up.shape, t_new, noise=noise, generator=generator, dtype=wd,
                        device=up.device, what="x0_renoise")
    tb = _time_tensor(t_new, up.to(wd))
    return ((1 - tb) * up.to(wd) + tb * noise).to(x0_hat.dtype)


# ---------------------------------------------------------------------------
# spectra
# ---------------------------------------------------------------------------


def rapsd(x: torch.Tensor, *, basis: str = "dct"):
    """Radially averaged power spectrum of the last two axes.

    Args:
        x: ``(..., H, W)``; all leading axes (batch, channels, frames) are averaged.
        basis: ``"dct"`` (default: orthonormal DCT coefficients, frequency
            ``|k| / 2`` in cycles per image, the units of the SPD constants and
            of :class:`specdiff.testbeds.GaussianField`; no edge leakage) or
            ``"fft"`` (periodic, frequency ``|f|`` in cycles per image).

    Returns:
        ``(freqs, power)``: 1-D float64 tensors, DC excluded. For white noise of
        variance ``s**2`` the power is flat at ``s**2``.
    """
    if x.ndim < 2:
        raise ValueError(f"rapsd needs at least (H, W), got {tuple(x.shape)}")
    _check_finite(x)
    h, w = x.shape[-2:]
    xd = x.to(torch.float64)
    if basis == "dct":
        c = dct(xd, (-2, -1))
        ky = torch.arange(h, dtype=torch.float64)
        kx = torch.arange(w, dtype=torch.float64)
        radius = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)  # in half-cycles
        scale = 0.5
    elif basis == "fft":
        c = torch.fft.fft2(xd - xd.mean(dim=(-2, -1), keepdim=True), norm="ortho")
        ky = torch.fft.fftfreq(h, d=1.0 / h, dtype=torch.float64)
        kx = torch.fft.fftfreq(w, d=1.0 / w, dtype=torch.float64)
        radius = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
        scale = 1.0
    else:
        raise ValueError(f"basis must be 'dct' or 'fft', got {basis!r}")
    power = (c.abs() ** 2).reshape(-1, h, w).mean(0).cpu()
    bins = torch.round(radius).long()
    nmax = (min(h, w) - 1) if basis == "dct" else min(h, w) // 2
    keep = (bins >= 1) & (bins <= nmax)
    sums = torch.zeros(nmax + 1, dtype=torch.float64).index_add_(0, bins[keep], power[keep])
    counts = torch.zeros(nmax + 1, dtype=torch.float64).index_add_(
        0, bins[keep], torch.ones_like(power[keep])
    )
    idx = torch.arange(1, nmax + 1)
    return idx.to(torch.float64) * scale, sums[1:] / counts[1:]


def fit_power_law(freqs, power, *, fmin: float | None = None, fmax: float | None = None,
                  num: int = 32):
    """Fit ``power = A * freqs**-beta`` by least squares on log-spaced frequencies.

    The log-power is resampled (linear interpolation in log-log) at ``num``
    log-spaced frequencies in ``[fmin, fmax]`` before the regression, so the
    many high-frequency bins do not dominate the fit (Dieleman 2024).

    Returns ``(A, beta)`` as floats.
    """
    f = torch.as_tensor(freqs, dtype=torch.float64).flatten()
    p = torch.as_tensor(power, dtype=torch.float64).flatten()
    if f.numel() != p.numel() or f.numel() < 2:
        raise ValueError("freqs and power must be 1-D of the same length (at least 2)")
    ok = (f > 0) & (p > 0) & torch.isfinite(p)
    if ok.sum() < 2:
        raise ValueError("need at least two positive, finite (freq, power) pairs to fit")
    f, p = f[ok], p[ok]
    order = torch.argsort(f)
    lf, lp = torch.log(f[order]), torch.log(p[order])
    lo = math.log(fmin) if fmin else float(lf[0])
    hi = math.log(fmax) if fmax else float(lf[-1])
    if not hi > lo:
        raise ValueError(f"empty frequency range for the fit: [{fmin}, {fmax}]")
    grid = torch.linspace(lo, hi, num, dtype=torch.float64)
    lp_grid = _interp(grid, lf, lp)
    design = torch.stack([torch.ones_like(grid), grid], 1)
    coef = torch.linalg.lstsq(design, lp_grid[:, None]).solution[:, 0]
    return float(torch.exp(coef[0])), float(-coef[1])


def _interp(xq, xp, fp):
    idx = torch.searchsorted(xp, xq).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    y0, y1 = fp[idx - 1], fp[idx]
    w = ((xq - x0) / (x1 - x0).clamp_min(1e-300)).clamp(0, 1)
    return y0 + w * (y1 - y0)
