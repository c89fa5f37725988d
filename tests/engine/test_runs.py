"""A run is never lost (minirccn.engine.runs; atomic writes: minirccn.core.files): output folders,
the run lock, atomic writes, signals.

Training here is tiny (64x64 shapes, a 3-stage 8-channel backbone, NumPy backend) so that the
signal tests can start a real ``minirccn train`` process and interrupt it after its first step.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import SHAPES, TINY

from minirccn.app.cli import main
from minirccn.app.train import resolve_out
from minirccn.config import preset
from minirccn.core import files
from minirccn.core.errors import MinirccnError
from minirccn.data import load_dataset
from minirccn.engine import loop as T
from minirccn.engine import runs, validation
from minirccn.engine.checkpoint import load_checkpoint, save_checkpoint


# `minirccn train` in a child process with the tiny config and data above; prints "STEP k"
# after each SGD step (and sleeps a little) so that a test can signal it mid-run
CHILD = textwrap.dedent(
    f"""
    import sys, time
    from minirccn.engine import loop as T
    from minirccn.data import ShapesConfig, load_dataset
    shapes = ShapesConfig(**{SHAPES.__dict__!r})
    T.load_dataset = lambda spec, split, images=None, **kw: load_dataset(
        spec, split, images=images, shapes_config=shapes)
    import minirccn.app.train as A
    _preset = A.preset
    A.preset = lambda name, **kw: _preset("tiny", **{TINY!r})
    _step = T.train_step
    def step(*args, **kwargs):
        out = _step(*args, **kwargs)
        print("STEP", args[4], flush=True)
        time.sleep(0.05)
        return out
    T.train_step = step
    from minirccn.app.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def child(args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, "train", "--backend", "numpy", "--no-progress", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def data():
    return load_dataset("shapes", "train", shapes_config=SHAPES), load_dataset(
        "shapes", "test", shapes_config=SHAPES
    )


def run(data, out, **kw):
    kw.setdefault("eval_split", "")
    kw.setdefault("outputs", False)
    return T.train(
        preset("tiny", **TINY),
        train_data=data[0],
        test_data=data[1],
        out=out,
        backend="numpy",
        progress=False,
        **kw,
    )


def one_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


# ----------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_the_current_step_and_resume_continues(tmp_path, sig, status):
    out = str(tmp_path / "run")
    proc = child(["--out", out, "--iters", "1000", "--eval-split", ""])
    first = proc.stdout.readline()
    assert first == "STEP 0\n", proc.communicate()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr
    steps = [int(line.split()[1]) for line in (first + stdout).splitlines() if "STEP" in line]
    _model, state = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert state["step"] == steps[-1] + 1 < 1000  # saved at the step it had finished
    assert f"resume with: minirccn train --backend numpy --no-progress --iters 1000" in stderr
    assert stat_mode(os.path.join(out, "checkpoint.npz")) == files.default_file_mode()

    k = state["step"]
    again = child(["--out", out, "--iters", str(k + 2), "--eval-split", "", "--resume"])
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert [line for line in stdout.splitlines() if line.startswith("STEP")] == [
        f"STEP {k}",
        f"STEP {k + 1}",
    ]
    assert load_checkpoint(os.path.join(out, "checkpoint.npz"))[1]["step"] == k + 2
    assert not os.path.exists(os.path.join(out, runs.LOCK_NAME))


def stat_mode(path):
    return os.stat(path).st_mode & 0o777


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_write_keeps_the_old_file_on_failure_and_gives_normal_permissions(tmp_path):
    path = tmp_path / "metrics.json"
    files.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert stat_mode(path) == files.default_file_mode()
    with pytest.raises(MinirccnError, match=r"metrics.json: cannot write .*No space left.*kept"):
        with files.atomic_path(path, "metrics") as tmp:
            with open(tmp, "w") as fh:
                fh.write("half")
            raise OSError(28, "No space left on device")
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_disk_full_during_training_names_the_file_and_keeps_the_previous_checkpoint(
    data, tmp_path, monkeypatch, capsys
):
    calls = []
    real = np.savez

    def savez(*args, **kwargs):
        calls.append(1)
        if len(calls) >= 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "savez", savez)
    with pytest.raises(MinirccnError) as info:
        run(data, str(tmp_path), iters=5, checkpoint_every=2)
    message = str(info.value)
    assert "checkpoint.npz: cannot write the checkpoint (step 4)" in message
    assert "No space left on device" in message and "previous one is kept" in message
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoint.npz")[1]["step"] == 2
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz"]  # no temporary file, no lock


def test_leftover_temporary_files_of_a_killed_save_are_removed_at_the_next_start(
    data, tmp_path, capsys
):
    dead = dead_pid()
    (tmp_path / f".checkpoint.npz.tmp-{dead}-0a1b2c3d.npz").write_bytes(b"half")
    (tmp_path / ".checkpoint-x1y2.tmp").write_bytes(b"half (older versions' name)")
    run(data, str(tmp_path), iters=1)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz"]
    assert "removed 2 temporary file(s)" in capsys.readouterr().err


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------- output folders


def test_unusable_out_is_refused_in_seconds_before_reading_data(tmp_path, capsys, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("data was read")

    monkeypatch.setattr(T, "load_dataset", no_data)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["train", "--out", str(afile), "--iters", "1"]) == 2
    assert one_line(capsys) == f"minirccn: error: --out {afile}: exists and is not a folder"
    assert main(["train", "--out", str(afile / "sub"), "--iters", "1"]) == 2
    assert f"--out {afile / 'sub'}: cannot create the folder" in one_line(capsys)
    if os.path.isdir("/proc/self"):  # not writable, even for root
        assert main(["train", "--out", "/proc/self", "--iters", "1"]) == 2
        assert "--out /proc/self: cannot write in this folder" in one_line(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_read_only_out_is_refused(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert main(["train", "--out", str(folder), "--iters", "1"]) == 2
        assert "cannot write in this folder" in one_line(capsys)
    finally:
        folder.chmod(0o700)


def test_explicit_out_holding_a_run_needs_resume_or_overwrite(data, tmp_path, capsys):
    run(data, str(tmp_path), iters=1, outputs=True)
    before = (tmp_path / "checkpoint.npz").read_bytes()
    with pytest.raises(MinirccnError, match="holds a run already .*--resume.*--overwrite"):
        run(data, str(tmp_path), iters=1)
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    (tmp_path / "metrics.json").write_text("{}")
    run(data, str(tmp_path), iters=2, overwrite=True)  # replaces it: no metrics of the old run
    assert load_checkpoint(tmp_path / "checkpoint.npz")[1]["step"] == 2
    assert not (tmp_path / "metrics.json").exists()
    assert "--overwrite: removed the previous run's checkpoint.npz, metrics.json" in (
        capsys.readouterr().err
    )
    with pytest.raises(MinirccnError, match="--resume and --overwrite: choose one"):
        run(data, str(tmp_path), iters=2, overwrite=True, resume=True)


def validated_run(data, out, eval_every, **kw):
    """A tiny run that validates every ``eval_every`` steps (0: never) and writes its outputs."""
    return T.train(
        preset("tiny", **TINY, eval_every=eval_every),
        train_data=data[0],
        test_data=data[1],
        out=out,
        backend="numpy",
        progress=False,
        eval_split="",
        **kw,
    )


def test_overwrite_removes_every_output_of_the_previous_run(data, tmp_path, capsys):
    """issue 25, D3: best.npz and val_curve.png of the old run went on after --overwrite."""
    validated_run(data, str(tmp_path), eval_every=1, iters=2)
    assert (tmp_path / "best.npz").exists() and (tmp_path / "val_curve.png").exists()
    validated_run(data, str(tmp_path), eval_every=0, iters=1, overwrite=True)
    assert not (tmp_path / "best.npz").exists()
    assert not (tmp_path / "val_curve.png").exists()
    assert "best.npz" in capsys.readouterr().err  # the note names what it removed
    assert "best" not in json.loads((tmp_path / "metrics.json").read_text())


@pytest.mark.parametrize("name", runs.RUN_OUTPUTS)
def test_a_folder_with_any_run_output_holds_a_run(data, tmp_path, name):
    """issue 25, D4: a folder holding only best.npz (a run killed before its first checkpoint)
    was not a run: the new run replaced that best.npz without --overwrite."""
    (tmp_path / name).write_bytes(b"the earlier run's " + name.encode())
    with pytest.raises(MinirccnError, match=f"holds a run already \\({name}\\)"):
        validated_run(data, str(tmp_path), eval_every=1, iters=1)
    assert (tmp_path / name).read_bytes() == b"the earlier run's " + name.encode()
    assert sorted(os.listdir(tmp_path)) == [name]


def scripted_validation(monkeypatch, map50s):
    """Periodic evaluations return these mAP@0.5 values in turn (mAP: a tenth of each)."""
    values = iter(map50s)

    def evaluate(model, data, **kw):
        v = next(values)
        return {"map50": v, "map": v / 10, "mar_100": v / 2}

    monkeypatch.setattr(validation, "evaluate_model", evaluate)


def test_resume_goes_on_with_the_validation_state(data, tmp_path, monkeypatch, capsys):
    """issue 25, D5: after --resume the first evaluation always beat best=None and replaced
    best.npz with a worse model; metrics.json kept only the curve after the resume; resuming a
    finished run emptied val_curve and best."""
    scripted_validation(monkeypatch, [0.5, 0.2, 0.1, 0.3])
    out = tmp_path / "run"
    validated_run(data, str(out), eval_every=1, iters=2)
    best_before = (out / "best.npz").read_bytes()
    result = validated_run(data, str(out), eval_every=1, iters=4, resume=True)
    assert (out / "best.npz").read_bytes() == best_before  # 0.1 and 0.3 < 0.5: kept
    metrics = json.loads((out / "metrics.json").read_text())
    assert [p["step"] for p in metrics["val_curve"]] == [1, 2, 3, 4]
    assert [p["map50"] for p in metrics["val_curve"]] == [0.5, 0.2, 0.1, 0.3]
    assert metrics["best"]["step"] == 1 and metrics["best"]["map50"] == 0.5
    assert result["metrics"]["best"]["step"] == 1
    # a finished run resumed: nothing to train, its validation is not forgotten
    capsys.readouterr()
    validated_run(data, str(out), eval_every=1, iters=4, resume=True)
    assert "has done all 4 steps already" in capsys.readouterr().err
    again = json.loads((out / "metrics.json").read_text())
    assert again["val_curve"] == metrics["val_curve"] and again["best"] == metrics["best"]
    assert (out / "best.npz").read_bytes() == best_before


def test_resume_of_an_older_checkpoint_takes_the_best_point_from_best_npz(
    data, tmp_path, monkeypatch
):
    """A checkpoint written before the validation state was kept: best.npz's own record
    (step, val_map50) is the best so far."""
    scripted_validation(monkeypatch, [0.5, 0.2, 0.1])
    out = tmp_path / "run"
    validated_run(data, str(out), eval_every=1, iters=2)
    model, state = load_checkpoint(out / "checkpoint.npz")
    extra = {k: v for k, v in state["extra"].items() if not k.startswith("val_")}
    save_checkpoint(
        out / "checkpoint.npz", model, optimizer_state=state["optimizer"], step=2,
        rng_state=state["rng_state"], extra=extra,
    )
    best_before = (out / "best.npz").read_bytes()
    result = validated_run(data, str(out), eval_every=1, iters=3, resume=True)
    assert (out / "best.npz").read_bytes() == best_before
    assert result["metrics"]["best"]["step"] == 1


def test_default_out_advances_to_a_new_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert resolve_out(None, resume=False) == "runs/train"
    os.makedirs("runs/train")
    assert resolve_out(None, resume=False) == "runs/train"  # an empty folder holds no run
    open("runs/train/checkpoint.npz", "w").close()
    assert resolve_out(None, resume=False) == "runs/train2"
    assert "runs/train holds a run; this run writes to runs/train2" in capsys.readouterr().err
    os.makedirs("runs/train2")
    open("runs/train2/metrics.json", "w").close()
    assert resolve_out(None, resume=False) == "runs/train3"
    assert resolve_out("mine", resume=False) == "mine"  # explicit: as given
    # --resume without --out continues the latest run that has a checkpoint
    assert resolve_out(None, resume=True) == "runs/train"
    os.makedirs("runs/train3")
    open("runs/train3/checkpoint.npz", "w").close()
    assert resolve_out(None, resume=True) == "runs/train3"


# ----------------------------------------------------------------------------- the run lock


def test_a_second_run_into_a_folder_in_use_is_refused(data, tmp_path, capsys):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from minirccn.engine.runs import RunLock; "
            f"RunLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert runs.lock_owner(tmp_path) == holder.pid
        assert main(["train", "--out", str(tmp_path), "--iters", "1"]) == 2
        line = one_line(capsys)
        assert f"another minirccn run (pid {holder.pid}) is using this folder" in line
        assert not (tmp_path / "checkpoint.npz").exists()
    finally:
        holder.kill()
        holder.wait()
    # its process is gone: the lock is stale and taken over with a note
    assert runs.lock_owner(tmp_path) is None
    run(data, str(tmp_path), iters=1)
    assert f"took over a stale run lock (pid {holder.pid}" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz"]


def test_lock_in_one_process_is_exclusive_and_released(tmp_path):
    with runs.RunLock(tmp_path):
        with pytest.raises(MinirccnError, match=f"pid {os.getpid()}"):
            runs.RunLock(tmp_path).acquire()
    with runs.RunLock(tmp_path):
        pass
    assert os.listdir(tmp_path) == []


def test_resume_command_keeps_the_flags_and_names_the_folder():
    argv = ["train", "--out", "a b", "--iters", "9", "--overwrite", "--seed", "3"]
    assert runs.resume_command(argv, "a b") == (
        "minirccn train --iters 9 --seed 3 --out 'a b' --resume"
    )
    assert runs.resume_command(["train", "--out=x"], "x") == "minirccn train --out x --resume"


def test_failed_save_names_the_file(tmp_path, monkeypatch):
    from minirccn.detector.models.faster_rcnn import FasterRCNN

    model = FasterRCNN(preset("tiny", **TINY), ["__background__", "a"])
    path = tmp_path / "c.npz"

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(MinirccnError, match=r"c.npz: cannot write the checkpoint \(step 3\)"):
        save_checkpoint(path, model, step=3)
    assert os.listdir(tmp_path) == []


def test_a_signal_swallowed_while_the_code_loads_still_stops_the_run(data, tmp_path):
    with runs.early_signals() as pending:
        pending["signum"] = signal.SIGTERM  # as if a library had swallowed the KeyboardInterrupt
        with pytest.raises(runs.Interrupted) as info:
            run(data, str(tmp_path), iters=1)
    assert info.value.exit_status == 143 and "no checkpoint was saved" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_empty_out_and_bad_eval_images_are_flag_errors(capsys):
    assert main(["train", "--out", "", "--iters", "1"]) == 2
    assert one_line(capsys) == "minirccn: error: --out: expected a folder name, got an empty string"
    assert main(["train", "--eval-images", "0"]) == 2
    assert "--eval-images: expected a positive number" in one_line(capsys)


def test_negative_seed_names_the_flag(capsys):
    for argv in (["train", "--seed", "-1"], ["eval", "--checkpoint", "x.npz", "--seed", "-1"]):
        assert main(argv) == 2
        assert one_line(capsys) == "minirccn: error: --seed: expected a non-negative integer, got -1"


def test_an_interrupt_in_a_finaliser_prints_no_traceback(capsys):
    from minirccn.app import cli

    class Unraisable:
        exc_value = KeyboardInterrupt()

    cli._unraisable(Unraisable())
    Unraisable.exc_value = RuntimeError("boom")
    cli._unraisable(Unraisable())
    assert one_line(capsys) == "minirccn: warning: ignored RuntimeError: boom"
