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
