"""The command line's contract: one error line on stderr, exit code 2, no traceback."""

import subprocess
import sys

import pytest

from gradguard.cli import run


def test_datasets_lists_all_five(capsys, tmp_path):
    assert run(["datasets", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("mnist-sample", "mnist", "fashion-mnist", "cifar10", "cifar100", "npz:PATH"):
        assert name in out
    assert str(tmp_path) in out


def test_info_reports_versions(capsys):
    assert run(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "threads" in out


@pytest.mark.parametrize("argv, message", [
    (["nonsense"], "invalid choice"),
    (["datasets", "--data-root"], "expected one argument"),
])
def test_bad_arguments_one_line_exit_2(capsys, argv, message):
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gradguard: error:") and message in err


def test_entry_point_has_no_traceback():
    done = subprocess.run([sys.executable, "-m", "gradguard", "nonsense"], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["attack", "--defense", "dp-gaussian", "--defense-opt", "sigma=abc"], "sigma='abc'"),
    (["attack", "--defense", "dp-gaussian", "--defense-opt", "sigma=inf"], "finite"),
    (["attack", "--defense", "dp-laplace", "--defense-opt", "scale=NaN"], "finite"),
    (["attack", "--defense", "dp-gaussian", "--defense-opt", "sigma=-1"], "sigma=-1"),
    (["attack", "--defense", "graddefense", "--defense-opt", "chosen=20"], "chosen (k) = 20"),
    (["attack", "--defense", "nope"], "unknown name 'nope'"),
    (["attack", "--defense-opt", "sigma"], "KEY=VALUE"),
    (["attack", "--images", "0"], "--images (0)"),
    (["attack", "--images", "-3"], "--images (-3)"),
    (["attack", "--batch-size", "0"], "--batch-size (0)"),
    (["attack", "--iterations", "0"], "iterations=0"),
    (["attack", "--restarts", "-1"], "restarts=-1"),
    (["attack", "--model", "nope"], "unknown name 'nope'"),
    (["attack", "--model", "convnet", "--model-opt", "width=-3"], "width=-3"),
    (["attack", "--model-opt", "bogus=1"], "bogus"),
    (["attack", "--dataset", "npz:/nonexistent.npz"], "/nonexistent.npz"),
    (["attack", "--dataset", "nope"], "unknown name 'nope'"),
    (["attack", "--images", "1", "--out", "/dev/null/x"], "--out /dev/null/x"),
    (["train", "--clients", "0"], "clients=0"),
    (["train", "--rounds", "-1"], "rounds=-1"),
    (["train", "--lr", "nan"], "lr=nan"),
    (["train", "--lr", "inf"], "lr=inf"),
    (["train", "--lr", "-0.1"], "lr=-0.1"),
    (["train", "--fraction", "0"], "fraction=0.0"),
    (["train", "--alpha", "inf"], "alpha=inf"),
    (["train", "--batch-size", "0"], "batch_size=0"),
    (["train", "--defense", "nope"], "unknown defense 'nope'"),
    (["train", "--defense", "graddefense", "--defense-opt", "sigma=abc"], "sigma='abc'"),
    (["train", "--defense", "graddefense", "--defense-opt", "chosen=20"], "chosen (k) = 20"),
    (["train", "--algorithm", "fedsgd", "--local-steps", "3"], "local_steps=3"),
    (["train", "--model", "nope"], "unknown model 'nope'"),
    (["train", "--model-opt", "dlg_init=abc"], "dlg_init='abc'"),
    (["train", "--dataset", "npz:/nonexistent.npz"], "/nonexistent.npz"),
    (["train", "--clients", "100000"], "clients"),
    (["train", "--rounds", "1", "--out", "/dev/null/x"], "--out /dev/null/x"),
    (["datasets", "--bogus"], "unrecognized arguments"),
    (["defenses", "--bogus"], "unrecognized arguments"),
    (["info", "--bogus"], "unrecognized arguments"),
])
def test_bad_inputs_are_one_line_exit_2(capsys, tmp_path, argv, message):
    """Bad user input never escapes as a traceback: one line on stderr naming the problem, exit 2."""
    if argv[0] in ("attack", "train") and "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path / "out")]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gradguard: error:") and "Traceback" not in err
    assert message in err


def test_entry_point_reports_a_bad_model_option_without_traceback():
    done = subprocess.run([sys.executable, "-m", "gradguard", "train", "--model", "convnet", "--model-opt", "width=-3"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert "width=-3" in done.stderr
