"""The command line: its options are exactly salnp.RunConfig's fields, its help is written for
users, and a mistake ends in one line naming it (exit status 2, no folder left behind)."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

import salnp
from salnp.cli import parser


def _run(*args, cwd):
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(salnp.__file__)))
    env = dict(os.environ, PYTHONPATH=pkg_parent)
    return subprocess.run([sys.executable, "-m", "salnp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_train_option_is_a_runconfig_field():
    train = parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train._actions if a.dest != "help"}
    assert dests == {f.name for f in dataclasses.fields(salnp.RunConfig)}


def test_help_is_for_users():
    sub = parser()._subparsers._group_actions[0].choices["train"]
    train = sub.format_help()
    for a in sub._actions:          # every option has a help text (--no-augment, --threads...)
        assert a.help and len(a.help) > 10, a.option_strings
    assert "examples:" in train and "Fashion-MNIST" in parser().format_help()
    assert "shared by __main__" not in train and "(default: None)" not in train
    sweep = parser()._subparsers._group_actions[0].choices["sweep"].format_help()
    assert "examples:" in sweep and "(default: None)" not in sweep


@pytest.mark.parametrize("args, fragment", [
    (["--width", "0"], "width=0: must be an integer in [1"),
    (["--depth", "18"], "depth=18: must be 6n+2"),
    (["--data", "cifar10", "--root", "/no/such/dir"], "root='/no/such/dir': no such folder"),
    (["--data", "cifar10"], "root: required for data='cifar10'"),
    (["--checkpointing", "block"], "invalid choice: 'block'"),
    (["--lr", "nan"], "lr=nan: must be finite and > 0"),
    (["--beta0", "1e-300", "--beta1", "1e300"], "the schedule leaves the finite"),
])
def test_train_mistakes_end_in_one_line(args, fragment, tmp_path):
    r = _run("train", *args, "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(tmp_path):
    r = _run("--debug", "train", "--width", "0", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_sweep_checks_every_trial_before_starting(tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"axes": {"widht": [4]}, "seeds": [0], "fixed": {"epochs": 1}}))
    r = _run("sweep", str(grid), "--out", str(tmp_path / "sw"), cwd=tmp_path)
    assert r.returncode == 2 and "did you mean 'width'" in r.stderr.strip().splitlines()[-1]
    grid.write_text(json.dumps([{"width": 4, "epochs": 1},
                                {"data": "cifar10", "root": "/no/such/dir"}]))
    r = _run("sweep", str(grid), "--out", str(tmp_path / "sw"), cwd=tmp_path)
    assert r.returncode == 2 and "no such folder" in r.stderr
    assert not (tmp_path / "sw" / "trials").exists()      # the good trial did not start


def test_sigterm_ends_a_run_like_ctrl_c(tmp_path):
    """SIGTERM (Slurm, `timeout`, docker stop) during training: the run stops at its last
    finished epoch and writes a summary of that state, as Ctrl-C does."""
    import signal
    import time

    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(salnp.__file__)))
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "salnp", "train", "--width", "4", "--depth", "8",
                          "--epochs", "50", "--subset", "1500", "--test-subset", "200",
                          "--no-progress", "--out", str(out)], cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=pkg_parent), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "checkpoint.npz").exists():
        time.sleep(0.2)
    assert (out / "checkpoint.npz").exists(), "no epoch finished"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=240)
    summary = json.loads((out / "summary.json").read_text())
    assert 1 <= summary["epochs"] < 50 and (out / "inference.npz").exists(), err
