"""Pictures and reports a newcomer can read: the attack grid is scaled up and labelled, the
report explains its terms where they are first used, and huge overheads read as factors."""

from __future__ import annotations

import matplotlib.image
import pytest

from gradguard.cli import run
from gradguard.experiments import figures
from gradguard.experiments.report import GLOSSARY, explain_terms
from gradguard.experiments.tables import Table, overhead_text


def test_the_attack_grid_is_scaled_up_labelled_and_titled(tmp_path, monkeypatch):
    drawn = []
    close = figures.plt.close
    monkeypatch.setattr(figures.plt, "close", lambda fig: drawn.append(fig))  # keep the figure to read its text
    assert run(["attack", "--images", "3", "--iterations", "2", "--attack", "gia", "--defense", "dp-gaussian",
                "--defense-opt", "sigma=0.01", "--out", str(tmp_path)]) == 0
    height, width = matplotlib.image.imread(tmp_path / "grid.png").shape[:2]
    assert width >= 3 * figures.MIN_IMAGE_PX and height >= 2 * figures.MIN_IMAGE_PX
    (fig,) = drawn
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "gia vs dp-gaussian (sigma=0.01) on mnist-sample" in title and "floor" in title
    axes = fig.axes
    assert [axes[0].get_ylabel(), axes[3].get_ylabel()] == ["truth", "reconstruction"]
    for ax in axes[3:]:
        assert ax.get_xlabel().startswith("PSNR ") and "SSIM " in ax.get_xlabel()
        extent = ax.get_window_extent()
        assert extent.width >= figures.MIN_IMAGE_PX and extent.height >= figures.MIN_IMAGE_PX
        assert ax.get_images()[0].get_interpolation() == "nearest"
    close(fig)


@pytest.mark.parametrize("ratio, text", [(1.0, "+0.0%"), (1.125, "+12.5%"), (0.9, "-10.0%"), (3.44, "x3.4"),
                                         (456.038, "x456")])
def test_overheads_read_as_percentages_then_factors(ratio, text):
    assert overhead_text(ratio) == text


def test_each_term_is_explained_once_where_it_is_first_used():
    privacy = Table("Privacy", ["dataset", "attack", "none"], [["d", "gia", "1"]])
    adaptive = Table("Adaptive", ["dataset", "attack", "none"], [["d", "detect-mute + gia", "1"]])
    security = Table("Security", ["dataset", "floor: mean image", "within 2 dB & 0.05 of the better floor"], [])
    sweep = Table("Frontier, against the floor", ["dataset", "floor PSNR / SSIM"], [])
    explained = explain_terms([privacy, adaptive, security, sweep])
    notes = [[note.split(" ")[0] for note in t.notes] for t in explained]
    assert notes == [[], ["muted"], ["floor:", "verdict"], []]
    assert {term for term, _, _ in GLOSSARY} >= {"floor", "verdict", "muted attack"}
    assert explained[2].markdown().splitlines()[2].startswith("- floor: ")
