"""Atomic writes: the target holds the old or the new content, never a half-written file."""

import json
import os

import pytest

from specdiff.fileio import atomic_write, atomic_write_json, atomic_write_text


def test_writes_content_with_the_umask_mode(tmp_path):
    p = tmp_path / "sub" / "a.json"
    atomic_write_json(p, {"x": [1, 2]})
    assert json.loads(p.read_text()) == {"x": [1, 2]}
    mask = os.umask(0)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path):
    p = tmp_path / "table.md"
    atomic_write_text(p, "old")

    def half(tmp):
        with open(tmp, "w") as f:
            f.write("half of the new")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write(p, half)
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["table.md"]


def test_temp_name_keeps_the_suffix(tmp_path):
    seen = []
    atomic_write(tmp_path / "img.png", lambda tmp: (seen.append(tmp), open(tmp, "wb").close()))
    assert seen[0].endswith(".png") and os.path.dirname(seen[0]) == str(tmp_path)
