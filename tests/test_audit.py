"""`gradguard audit` and `gradguard.audit`: your own model (a file or a module), your own images
(an ImageFolder), BatchNorm and dropout, other image sizes, one-line errors, and a
recommendation that parses back into a working defense. Tiny budget: seconds per audit."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import gradguard
from gradguard.auditing import AuditConfig, DefenseResult, parse_recommendation, prepare_audit
from gradguard.auditing.result import BatchResult, recommendation_for
from gradguard.cli import run
from gradguard.defenses import Defense, DefenseContext
from gradguard.errors import ConfigError
from gradguard.models import build_model
from gradguard.models.user import pin

MYNET = '''
from torch import nn


def make_model(num_classes=10):
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(6 * 14 * 14, num_classes))
'''

BNNET = '''
from torch import nn


class BNNet(nn.Module):
    """BatchNorm and dropout: the mode the gradient is taken in matters."""

    def __init__(self, num_classes, in_channels, image_size):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AvgPool2d(4), nn.Flatten(), nn.Dropout(0.2))
        self.fc = nn.Linear(4 * (image_size // 4) ** 2, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))
'''

WIDE = '''
from torch import nn


class ColourNet(nn.Module):
    def __init__(self, num_classes, in_channels, image_size):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 4, 5, stride=4, padding=2), nn.ReLU(), nn.Flatten())
        self.fc = nn.Linear(4 * (image_size // 4) ** 2, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def colour_net(num_classes, in_channels, image_size):
    return ColourNet(num_classes, in_channels, image_size)


def rgb_only(num_classes):
    return ColourNet(num_classes, 3, 64)


def five_outputs():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 5))


NOT_A_MODEL = 3
'''

TINY = ["--budget", "tiny"]


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def mynet(tmp_path) -> Path:
    return _write(tmp_path, "mynet.py", MYNET)


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory) -> Path:
    """An ImageFolder of 3 classes x 10 RGB 64x64 PNGs: a mean colour per class plus noise."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images") / "shapes"
    rng = np.random.default_rng(0)
    for label, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        (root / f"class_{label}").mkdir(parents=True)
        for i in range(10):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class_{label}" / f"{i:02d}.png")
    return root


def _audit_json(out: Path) -> dict:
    data = json.loads((out / "audit.json").read_text())
    assert (out / "audit.html").is_file()
    return data


def _check_written(data: dict, defenses: list[str], batch_sizes: list[int]) -> None:
    assert [d["defense"] for d in data["defenses"]] == defenses
    for defense in data["defenses"]:
        assert [b["batch_size"] for b in defense["batches"]] == batch_sizes
        for batch in defense["batches"]:
            assert np.isfinite(batch["psnr"]) and np.isfinite(batch["floor_psnr"])
            assert batch["psnr_attack"] and batch["floor_ssim"] > -1
        assert defense["verdict"].startswith(defense["defense"])
        assert defense["accuracy"] is not None
    assert data["settings"]["grid_tile_px"] >= 96
    assert data["gradient_mode"] in ("train", "eval")


def test_cli_audits_a_user_file_on_mnist_sample(mynet, tmp_path, capsys):
    out = tmp_path / "audit"
    code = run(["audit", "--model", f"{mynet}:make_model", "--dataset", "mnist-sample", "--images", "2",
                "--defenses", "none,dp-gaussian", "--out", str(out), *TINY])
    assert code == 0
    data = _audit_json(out)
    _check_written(data, ["none", "dp-gaussian"], [1, 4])
    assert data["model"]["label"] == "mynet.py:make_model" and data["model"]["sha256"]
    assert data["gradient_mode"] == "train"
    page = (out / "audit.html").read_text()
    assert "train mode" in page and "data:image/png;base64," in page
    printed = capsys.readouterr().out
    assert "gradients taken in train mode" in printed and "wall time" in printed
    # a rerun computes nothing: every cell comes from the store
    assert run(["audit", "--model", f"{mynet}:make_model", "--dataset", "mnist-sample", "--images", "2",
                "--defenses", "none,dp-gaussian", "--out", str(out), *TINY]) == 0


def test_cli_audits_an_image_folder(png_folder, tmp_path):
    model = _write(tmp_path, "wide.py", WIDE)
    out = tmp_path / "audit"
    code = run(["audit", "--model", f"{model}:colour_net", "--dataset", f"folder:{png_folder}", "--images", "2",
                "--batch-size", "2", "--defenses", "none,gc", "--normalize", "data", "--out", str(out), *TINY])
    assert code == 0
    data = _audit_json(out)
    _check_written(data, ["none", "gc"], [1, 2])
    assert data["dataset"]["image_shape"] == [3, 64, 64] and data["dataset"]["classes"] == 3
    assert data["dataset"]["reference"].startswith(f"folder:{png_folder.resolve()};sha256=")


def test_library_audits_a_batchnorm_dropout_model_in_train_and_eval_mode(tmp_path):
    path = _write(tmp_path, "bnnet.py", BNNET)
    for mode in ("train", "eval"):
        result = gradguard.audit(f"{path}:BNNet", "mnist-sample", out=tmp_path / mode, mode=mode, images=1,
                                 batch_size=2, defenses=["none", "graddefense"], budget="tiny")
        assert result.gradient_mode == mode
        assert result.model["batchnorm"] and result.model["dropout"]
        assert [b.batch_size for b in result.defense("none").batches] == [1, 2]
        assert mode in json.loads(result.json_path.read_text())["model"]["mode_note"] or mode == "train"


def test_library_audits_a_colour_64px_model_given_as_an_instance(png_folder, tmp_path, monkeypatch):
    _write(tmp_path, "wide.py", WIDE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import wide  # a module on the path: referenced as wide:colour_net

    model = wide.ColourNet(3, 3, 64)
    result = gradguard.audit(model, f"folder:{png_folder}", out=tmp_path / "out", images=2, batch_size=1,
                             defenses=["none", "dp-gaussian"], budget="tiny")
    assert result.model["reference"].startswith("wide:ColourNet;sha256=")
    assert result.model["weights"] and Path(result.model["weights"]).is_file()  # the instance's weights, saved
    assert [b.batch_size for b in result.defense("dp-gaussian").batches] == [1]
    assert result.dataset["image_shape"] == [3, 64, 64]


@pytest.mark.parametrize(("model", "dataset", "expected"), [
    ("{tmp}/missing.py:make_model", "mnist-sample", "file not found"),
    ("{tmp}/mynet.py:nothing_here", "mnist-sample", "has no 'nothing_here'"),
    ("{tmp}/wide.py:five_outputs", "mnist-sample", "returns (2, 5)"),
    ("{tmp}/wide.py:NOT_A_MODEL", "mnist-sample", "not an nn.Module class or a function"),
    ("{tmp}/wide.py:rgb_only", "mnist-sample", "does not take images"),
    ("{tmp}/mynet.py:make_model", "mnist-sample --weights {tmp}/none.pt", "weights: file not found"),
    ("no_such_module_xyz:make", "mnist-sample", "cannot import module"),
    ("{tmp}/mynet.py:make_model", "folder:{tmp}/no-images", "not a folder"),
])
def test_bad_models_and_data_exit_2_in_one_line(tmp_path, capsys, mynet, model, dataset, expected):
    _write(tmp_path, "wide.py", WIDE)
    model, dataset = model.format(tmp=tmp_path), dataset.format(tmp=tmp_path)
    code = run(["audit", "--model", model, "--dataset", *dataset.split(), "--out", str(tmp_path / "out"), *TINY])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("gradguard: error:") and expected in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "results.sqlite").exists()  # refused before any work


def test_weights_that_do_not_fit_exit_2(tmp_path, capsys, mynet):
    weights = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, weights)
    code = run(["audit", "--model", f"{mynet}:make_model", "--weights", str(weights), "--dataset", "mnist-sample",
                "--out", str(tmp_path / "out"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "does not fit" in err and err.count("\n") == 1


def test_recommendation_parses_back_into_a_working_defense():
    batch = BatchResult(1, 2, 12.0, "gia", 0.3, "gia", 12.5, 0.35, 1.0, True, [])
    found = DefenseResult("dp-gaussian", {"sigma": 0.012345678, "clip": 3.16}, None, [batch], 0.8, 0.01, 0.02,
                          True, "")
    rec = recommendation_for(found, scale=0.5, lr=0.1, steps=5)
    for line in (rec.library, rec.flower_server):
        name, options = parse_recommendation(line)
        assert name == "dp-gaussian" and options == {"sigma": 0.01235, "clip": 3.16}
        defense = Defense.from_config(name, **options)
        gradient = [torch.ones(4, 3), torch.ones(3)]
        defended = defense.defend(gradient, DefenseContext(generator=torch.Generator().manual_seed(0)))
        assert [g.shape for g in defended] == [g.shape for g in gradient]
        assert not torch.equal(defended[0], gradient[0])
    namespace: dict = {}
    exec("from gradguard import Defense\n" + rec.library, namespace)  # the line runs as pasted
    assert isinstance(namespace["defense"], Defense)
    pytest.importorskip("flwr")
    exec("from flwr.serverapp.strategy import FedAvg\nfrom gradguard.flower import DefendedStrategy\n"
         + rec.flower_server, namespace)
    assert namespace["strategy"].settings.defense == "dp-gaussian"
    assert namespace["strategy"].settings.scale == 0.5


def test_an_edited_model_file_gets_new_keys_and_old_pins_are_refused(mynet, mnist_sample):
    before = pin(f"{mynet}:make_model")
    config = AuditConfig(model=f"{mynet}:make_model", dataset="mnist-sample", images=1, batch_size=1,
                         defenses=["none"], budget="tiny")
    keys_before = {t.cell.key() for t in prepare_audit(config).plan.tasks}
    mynet.write_text(MYNET.replace("nn.Conv2d(1, 6", "nn.Conv2d(1, 7").replace("6 * 14", "7 * 14"))
    assert pin(f"{mynet}:make_model") != before
    keys_after = {t.cell.key() for t in prepare_audit(config).plan.tasks}
    assert not keys_before & keys_after
    with pytest.raises(ConfigError, match="changed since"):
        build_model(before, mnist_sample.image_shape, 10)


def test_user_models_by_module_and_option_rules(tmp_path, monkeypatch, mnist_sample):
    _write(tmp_path, "usernets.py", MYNET)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("usernets:make_model", mnist_sample.image_shape, 10)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(ConfigError, match="takes no options"):
        build_model("usernets:make_model", mnist_sample.image_shape, 10, width=3)
    with pytest.raises(ConfigError, match="apply to your own model"):
        prepare_audit(AuditConfig(model="lenet", dataset="mnist-sample", mode="eval", budget="tiny"))
