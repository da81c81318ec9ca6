"""Atomic writes survive being killed: the directory swap, and the temporaries that a killed
writer leaves (named after its process, removed by the next writer of the same name)."""

from __future__ import annotations

import pytest

from bqq_deploy import atomic
from bqq_deploy.atomic import atomic_directory, atomic_write_bytes

DEAD_PID = 2**22 + 12345  # above Linux's pid_max: no process has it


def test_a_new_directory_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
        assert (target / "old.txt").exists()  # untouched until the block succeeds
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging or trash left


def test_a_failed_block_leaves_the_old_directory(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "new.txt").write_text("new")
            raise RuntimeError("export failed")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


@pytest.mark.parametrize("exchange", [True, False])
def test_a_writer_killed_between_two_renames_is_repaired_by_the_next(tmp_path, monkeypatch, exchange):
    # Where the kernel cannot exchange two paths, the swap is two renames; a writer killed
    # between them leaves the old directory moved aside and none in place. The next writer
    # puts it back before it starts (and replaces it only if it succeeds).
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "bundle"
    aside = tmp_path / f".bundle.{DEAD_PID}.abc.old"
    (aside / "bundle").mkdir(parents=True)
    (aside / "bundle" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target):
            assert (target / "old.txt").read_text() == "old"
            raise RuntimeError("this writer fails too")
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_temporaries_of_dead_writers_are_removed(tmp_path):
    stale_dir = tmp_path / f".bundle.{DEAD_PID}.x.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.onnx").write_bytes(b"half a model")
    stale_file = tmp_path / f".w.bin.{DEAD_PID}.y.tmp"
    stale_file.write_bytes(b"half")
    live_file = tmp_path / f".w.bin.{atomic.os.getpid()}.z.tmp"  # a live writer's: kept
    live_file.write_bytes(b"in progress")
    with atomic_directory(tmp_path / "bundle"):
        pass
    atomic_write_bytes(tmp_path / "w.bin", [b"data"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bundle", "w.bin", live_file.name])
