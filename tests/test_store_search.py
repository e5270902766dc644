import signal
import subprocess
import sys
import textwrap

import pytest

from gradguard.errors import GradguardError
from gradguard.experiments.figures import pareto_front
from gradguard.experiments.search import weakest_matching_strength
from gradguard.experiments.store import ResultStore, cell_key


def test_keys_depend_on_every_field_but_not_on_order():
    assert cell_key("attack", {"a": 1, "b": 2}) == cell_key("attack", {"b": 2, "a": 1})
    assert cell_key("attack", {"a": 1, "b": 2}) != cell_key("attack", {"a": 1, "b": 3})
    assert cell_key("attack", {"a": 1}) != cell_key("train", {"a": 1})


def test_store_roundtrip_and_never_overwrites(tmp_path):
    store = ResultStore(tmp_path)
    key = store.put("attack", {"x": 1}, {"psnr": 12.5}, 3.0)
    assert key in store and store.get(key).result == {"psnr": 12.5}
    with pytest.raises(GradguardError, match="refusing to overwrite"):
        store.put("attack", {"x": 1}, {"psnr": 99.0}, 1.0)
    assert ResultStore(tmp_path).get(key).result == {"psnr": 12.5}, "reopened store keeps the row"


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(GradguardError, match="cannot open"):
        ResultStore(blocker / "run")


def test_kill_9_loses_only_the_cell_in_flight(tmp_path):
    """A writer killed with SIGKILL leaves every committed row readable and no partial row."""
    script = textwrap.dedent(f"""
        import os, signal
        from gradguard.experiments.store import ResultStore
        store = ResultStore({str(tmp_path)!r})
        for i in range(5):
            store.put("cell", {{"i": i}}, {{"value": i}}, 0.0)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script])
    assert done.returncode == -signal.SIGKILL
    store = ResultStore(tmp_path)
    assert sorted(c.result["value"] for c in store.cells("cell")) == [0, 1, 2, 3, 4]


def test_search_finds_the_weakest_matching_strength():
    # PSNR falls monotonically with strength; the target is met from strength 0.01 on.
    psnr_at = lambda s: 30.0 - 5.0 * (1 + __import__("math").log10(s / 1e-3))
    target = psnr_at(0.01) - 0.5
    result = weakest_matching_strength(psnr_at, target, 1e-4, 1.0, steps=20, tolerance_db=0.5)
    assert result.met and result.strength == pytest.approx(0.01, rel=0.01)
    assert result.psnr <= target + 0.5


def test_search_reports_when_the_target_is_out_of_reach():
    result = weakest_matching_strength(lambda s: 40.0, 10.0, 1e-3, 1.0)
    assert not result.met and result.strength == 1.0
    assert weakest_matching_strength(lambda s: 5.0, 10.0, 1e-3, 1.0).strength == 1e-3


def test_pareto_front_keeps_exactly_the_undominated_points():
    points = [{"name": n, "psnr": psnr, "accuracy": acc} for n, psnr, acc in
              [("private", 5.0, 0.5), ("accurate", 20.0, 0.9), ("balanced", 10.0, 0.8), ("dominated", 12.0, 0.7),
               ("tie", 10.0, 0.8)]]
    assert [p["name"] for p in pareto_front(points)] == ["private", "balanced", "tie", "accurate"]


def test_equal_privacy_interpolates_where_the_worst_case_crosses_floor_plus_margin():
    from gradguard.experiments.sweep import equal_privacy

    points = [{"defense": "d", "option": "sigma", "value": v, "psnr": psnr, "accuracy": acc, "floor_psnr": 10.0}
              for v, psnr, acc in [(0.01, 20.0, 0.9), (0.1, 13.0, 0.8), (1.0, 9.0, 0.4)]]
    points += [{"defense": "weak", "option": "p", "value": v, "psnr": 20.0, "accuracy": 0.9, "floor_psnr": 10.0}
               for v in (1.0, 2.0)]
    found, weak = equal_privacy(points, margin_db=1.0)
    assert found["reached"] and found["psnr"] == 11.0
    assert found["value"] == pytest.approx(10 ** -0.5)  # halfway from 13 to 9 dB, halfway on the log scale
    assert found["accuracy"] == pytest.approx(0.6)
    assert not weak["reached"] and weak["value"] == 2.0, "out of reach: the strongest swept setting"
