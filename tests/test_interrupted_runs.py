"""Interrupted and damaged training runs keep what they did.

SIGINT/SIGTERM finish the running step, checkpoint it and stop with one line (exit 1);
a kill -9 during training or in the middle of a checkpoint write loses only the steps
since the last checkpoint; resuming is bit-exact in every case (compared with a run that
never stopped, tensor by tensor); checkpoints whose bytes changed are refused. The
subprocess tests run the real ``specdiff train`` entry point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from specdiff.models import load
from specdiff.models.checkpoint import PAYLOAD_KEY
from specdiff.training import TrainConfig, engine, load_photos, train
from specdiff.training.config import recipe_config
from specdiff.training.engine import STATE_FILE, TrainingInterrupted

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"kind": "unet", "base": 8, "mults": [1, 2], "time_dim": 16}

# a CLI run long enough (about 5 s of steps) to be stopped after its first checkpoint
CLI_ARGS = ["--model-config", json.dumps({k: v for k, v in TINY.items() if k != "kind"}),
            "--sizes", "16", "--pixels", "1024", "--steps", "300", "--checkpoint-every", "20",
            "--log-every", "7", "--threads", "1", "--quiet"]


def tiny_cfg(**kw):
    base = dict(model=TINY, steps=8, sizes=(16,), size_weights=(1.0,), pixels=4 * 16 * 16,
                warmup=2, checkpoint_every=100, log_every=3, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base).validate()


@pytest.fixture(scope="module")
def photos():
    return load_photos("skimage", "train")


def _state(path: Path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118


def _assert_same_run(a: Path, b: Path) -> None:
    """Same tensors (weights, EMA, optimiser state) and the same loss history."""
    ta, ma = _state(a / STATE_FILE)
    tb, mb = _state(b / STATE_FILE)
    assert ta.keys() == tb.keys() and any(k.startswith("optim.") for k in ta)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    ha, hb = json.loads(ma["history"]), json.loads(mb["history"])
    assert [(r[0], r[1], r[3]) for r in ha] == [(r[0], r[1], r[3]) for r in hb]


def _signal_at(monkeypatch, step_to_signal: int, signum: int) -> None:
    """Deliver ``signum`` to this process during the first update of step ``step_to_signal``."""
    real = engine._update

    def update(acc, cfg, objective, nets, m, opts, photos, step, index):
        if step == step_to_signal and index == 0:
            signal.raise_signal(signum)
        return real(acc, cfg, objective, nets, m, opts, photos, step, index)

    monkeypatch.setattr(engine, "_update", update)


# ---------------------------------------------------------------------------
# in-process: the engine's signal handling, checksums and temp files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_the_running_step_and_resume_is_bit_exact(
        signum, tmp_path, photos, monkeypatch):
    cfg = tiny_cfg()
    train(cfg, tmp_path / "whole", progress=False, photos=photos, spectrum_sizes=(16,))
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    _signal_at(monkeypatch, 4, signum)  # during step index 4, between history rows (3, 6)
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, tmp_path / "cut", progress=False, photos=photos, spectrum_sizes=(16,))
    assert info.value.step == 5  # the running step finished before stopping
    assert info.value.signal_name == signal.Signals(signum).name
    assert info.value.path == tmp_path / "cut" / STATE_FILE
    assert isinstance(info.value, KeyboardInterrupt)  # `except Exception` does not swallow it
    _, md = _state(info.value.path)
    assert md["step"] == "5" and "meter" in md  # the loss terms of steps 4..5, for the row at 6
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert not (tmp_path / "cut" / "model.safetensors").exists()

    monkeypatch.undo()
    res = train(cfg, tmp_path / "cut", progress=False, photos=photos, spectrum_sizes=(16,))
    assert res.step == 8 and res.model_path is not None
    _assert_same_run(tmp_path / "whole", tmp_path / "cut")


def test_a_second_signal_stops_at_once(tmp_path, photos, monkeypatch):
    real = engine._update

    def update(acc, cfg, objective, nets, m, opts, photos, step, index):
        if step == 2:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return real(acc, cfg, objective, nets, m, opts, photos, step, index)

    monkeypatch.setattr(engine, "_update", update)
    with pytest.raises(KeyboardInterrupt) as info:
        train(tiny_cfg(), tmp_path, progress=False, photos=photos)
    assert not isinstance(info.value, TrainingInterrupted)
    assert not (tmp_path / STATE_FILE).exists()  # nothing half-written either
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the end of the payload: still a valid safetensors file
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_training_checkpoint_is_refused(tmp_path, photos):
    cfg = tiny_cfg(steps=2)
    train(cfg, tmp_path, progress=False, photos=photos, stop_after=1)
    state = tmp_path / STATE_FILE
    _flip_last_byte(state)
    with pytest.raises(ValueError, match=r"training checkpoint .* is corrupt"):
        train(cfg, tmp_path, progress=False, photos=photos)
    with pytest.raises(ValueError, match="checksum"):  # loading its EMA weights checks it too
        load(tmp_path)


def test_a_training_checkpoint_without_a_checksum_warns_and_resumes(tmp_path, photos):
    cfg = tiny_cfg(steps=2)
    train(cfg, tmp_path, progress=False, photos=photos, stop_after=1)
    state = tmp_path / STATE_FILE
    tensors, md = _state(state)
    save_file(tensors, str(state), metadata={k: v for k, v in md.items() if k != PAYLOAD_KEY})
    with pytest.warns(UserWarning, match="no recorded checksum"):
        res = train(cfg, tmp_path, progress=False, photos=photos, spectrum_sizes=(16,))
    assert res.step == 2


def test_temp_files_of_interrupted_writes_are_removed_on_start(tmp_path, photos):
    cfg = tiny_cfg(steps=2)
    tmp_path.mkdir(exist_ok=True)
    stale = tmp_path / ".train_state.k3j9x0qa.tmp.safetensors"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / "notes.tmp.txt"  # not a temp-file name of ours: kept
    other.write_text("mine")
    res = train(cfg, tmp_path, progress=False, photos=photos, stop_after=1)
    assert res.removed_temp_files == [stale] and not stale.exists() and other.exists()


# ---------------------------------------------------------------------------
# the real entry point in a subprocess: signals, kill -9, kill during a write
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, photos):
    """The run of CLI_ARGS, never stopped (in this process, one thread like the CLI runs)."""
    it = iter(CLI_ARGS)
    opts = dict(zip(it, it, strict=False))
    cfg = recipe_config("flow", model_config=json.loads(opts["--model-config"]), sizes=(16,),
                        pixels=1024, steps=300, checkpoint_every=20, log_every=7)
    out = tmp_path_factory.mktemp("uninterrupted")
    train(cfg, out, progress=False, photos=photos)
    return out


def _cli(out: Path, *extra: str, prelude: str = "") -> subprocess.Popen:
    code = textwrap.dedent(prelude) + "\nimport sys\nfrom specdiff.cli import main\n" \
        "sys.exit(main(sys.argv[1:]))\n"
    return subprocess.Popen([sys.executable, "-c", code, "train", *CLI_ARGS, *extra, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before writing {path}: "
                                 f"{proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"no {path} after {timeout} s")
        time.sleep(0.01)


def _finish(out: Path) -> str:
    proc = _cli(out)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "step 300/300" in stdout
    return stdout


def test_ctrl_c_saves_a_fresh_checkpoint_exits_1_with_one_line_and_resumes(tmp_path,
                                                                         uninterrupted):
    out = tmp_path / "run"
    proc = _cli(out)
    _wait_for(out / STATE_FILE, proc)  # the checkpoint at step 20: training is under way
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("specdiff train: stopped by SIGINT after step ")
    assert "rerun the same command to resume" in lines[0]
    step = int(lines[0].split("after step ")[1].split("/")[0])
    assert 20 <= step < 300
    _, md = _state(out / STATE_FILE)
    assert int(md["step"]) == step  # the checkpoint is of the step it stopped at
    _finish(out)
    _assert_same_run(uninterrupted, out)


def test_kill_9_during_training_loses_only_the_steps_since_the_checkpoint(tmp_path,
                                                                         uninterrupted):
    out = tmp_path / "run"
    proc = _cli(out)
    _wait_for(out / STATE_FILE, proc)
    time.sleep(0.3)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    _, md = _state(out / STATE_FILE)
    assert int(md["step"]) % 20 == 0 and int(md["step"]) < 300
    _finish(out)
    _assert_same_run(uninterrupted, out)


# the second checkpoint write dies half-way (kill -9 of itself), leaving its temp file
DIE_IN_SECOND_WRITE = """
import os, signal
import specdiff.models.checkpoint as ck
_real, _calls = ck.save_file, []
def _save_file(tensors, path, metadata=None):
    _calls.append(path)
    _real(tensors, path, metadata=metadata)
    if len(_calls) == 2:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
ck.save_file = _save_file
"""


def test_kill_during_a_checkpoint_write_keeps_the_last_one_and_resumes(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = _cli(out, prelude=DIE_IN_SECOND_WRITE)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    temps = sorted(p.name for p in out.glob(".*.tmp*"))
    assert len(temps) == 1 and temps[0].startswith(".train_state.")  # the half-written file
    _, md = _state(out / STATE_FILE)
    assert md["step"] == "20"  # the first checkpoint, untouched
    # loading the folder mid-training takes the checkpoint's EMA weights, never the temp file
    assert load(out).meta == {"step": 20, "from_train_state": True}
    stdout = _finish(out)
    assert f"removed 1 temporary file(s) an interrupted checkpoint write had left in {out}" in stdout
    assert not list(out.glob(".*.tmp*"))
    _assert_same_run(uninterrupted, out)
