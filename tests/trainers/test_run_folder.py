"""One trainer per run folder, and a new run never mixes with (or deletes) an earlier one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.trainers.helpers import ROOT, run_cli
from trainers import checkpoint as ckpt
from trainers.run_folder import LOCK_FILE, RunFolderError, RunLock, claim_run_folder


def one_error_line(capsys) -> str:
    """The refusal's one ``error:`` line; nothing else is printed (not even the config)."""
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert captured.out == "", captured.out
    return err


def test_a_new_run_refuses_a_folder_holding_another_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(run, "trainer.max_steps=20", "trainer.checkpoint_every=10") == 0
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert run_cli(run, "trainer.max_steps=5") == 2
    err = one_error_line(capsys)
    assert "trainer.resume=latest" in err and "trainer.output_dir" in err
    assert "trainer.overwrite=true" in err and "checkpoint-10" in err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing touched
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("not a run, still not ours to mix with")
    assert run_cli(tmp_path / "notes", "trainer.max_steps=2") == 2
    assert "mine.txt" in one_error_line(capsys)


def test_overwrite_replaces_the_earlier_run_and_pruning_keeps_the_new_one(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(run, "trainer.max_steps=20", "trainer.checkpoint_every=10") == 0
    (run / "mine.txt").write_text("kept")
    capsys.readouterr()
    assert run_cli(run, "trainer.max_steps=5", "trainer.keep_last=1",
                   "trainer.overwrite=true") == 0
    out = capsys.readouterr().out
    assert "trainer.overwrite=true: deleted" in out and "checkpoint-20" in out
    assert [s for s, _ in ckpt.find_checkpoints(run)] == [5]  # the new run's own checkpoint
    assert (run / "mine.txt").read_text() == "kept"  # not a trainer output: untouched
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    assert ckpt.latest_checkpoint(run).name == "checkpoint-5"


def records(run: Path) -> list[dict]:
    """metrics.jsonl without the timings (which differ from run to run)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    timing = ("time_per_step", "samples_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]


def test_resume_keeps_metrics_up_to_the_checkpoint_and_says_what_it_drops(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(run, "trainer.max_steps=12", "trainer.checkpoint_every=6") == 0
    original = records(run)
    # as if killed after step 12 was logged, before its checkpoint, mid-way through a line
    import shutil

    shutil.rmtree(run / "checkpoint-12")
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 13, "lo')
    capsys.readouterr()
    assert run_cli(run, "trainer.max_steps=12", "trainer.checkpoint_every=6",
                   "trainer.resume=latest") == 0
    out = capsys.readouterr().out
    assert "dropped 7 line(s) after step 6" in out
    assert records(run) == original  # the resumed run writes the dropped steps again, exactly


def test_claim_rules():
    import tempfile

    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        assert claim_run_folder(folder, None, None, overwrite=False) == []  # empty: fine
        (folder / LOCK_FILE).write_text("{}")
        assert claim_run_folder(folder, None, None, overwrite=False) == []  # the lock only
        (folder / "checkpoint-3").mkdir()
        assert claim_run_folder(folder, "latest", None, overwrite=False) == []
        inside = folder / "checkpoint-3"
        assert claim_run_folder(folder, str(inside), inside, overwrite=False) == []
        elsewhere = Path(name).parent / "other-run" / "checkpoint-9"
        with pytest.raises(RunFolderError, match="already holds another run"):
            claim_run_folder(folder, str(elsewhere), elsewhere, overwrite=False)


HOLDER = textwrap.dedent(
    """
    import sys, time
    from trainers.run_folder import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_a_second_trainer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run_cli(run, "trainer.max_steps=2") == 2
        err = one_error_line(capsys)
        assert f"in use by another trainer (pid {holder.pid} on {socket.gethostname()}" in err
        assert "trainer.output_dir" in err and not (run / "metrics.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == holder.pid  # left behind
    assert run_cli(run, "trainer.max_steps=2") == 0
    out = capsys.readouterr().out
    assert f"taking over the lock of a trainer that is gone (pid {holder.pid}" in out
    assert not (run / LOCK_FILE).exists()  # released at the end


def test_the_lock_holds_within_one_process_too(tmp_path):
    with RunLock(tmp_path / "run") as first:
        with pytest.raises(RunFolderError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path / "run").acquire()
        assert first.stale is None
    assert not (tmp_path / "run").exists()  # created empty by the lock, removed with it
