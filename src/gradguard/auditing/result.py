"""What an audit found: per defense and batch size the worst case against the floor, the
accuracy cost, a one-sentence verdict, and the recommendation ready to paste."""

from __future__ import annotations

import ast
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..experiments.store import ResultStore
from ..experiments.tables import attack_label, worst_case

__all__ = ["AuditResult", "BatchResult", "DefenseResult", "Recommendation", "collect", "parse_recommendation"]


@dataclass(frozen=True)
class BatchResult:
    """One defense at one batch size: the worst case over every attack against the floor."""

    batch_size: int
    images: int
    psnr: float
    psnr_attack: str
    ssim: float
    ssim_attack: str
    floor_psnr: float
    floor_ssim: float
    label_accuracy: float
    holds: bool
    attacks: list[dict[str, Any]]  # per attack: its label, mean PSNR and SSIM


@dataclass(frozen=True)
class DefenseResult:
    """One defense: its options (the searched strength on top of the fixed ones), how the
    strength was set, its worst case per batch size, its accuracy and round time."""

    defense: str
    options: dict[str, Any]
    strength: dict[str, Any] | None
    batches: list[BatchResult]
    accuracy: float | None
    round_time_s: float | None
    accuracy_cost: float | None  # accuracy without defense minus this one's (points of a fraction)
    holds: bool
    verdict: str


@dataclass(frozen=True)
class Recommendation:
    """The configuration that holds at the least accuracy cost, as code to paste."""

    defense: str
    options: dict[str, Any]
    accuracy: float | None
    reason: str
    library: str
    flower_client: str
    flower_server: str


@dataclass(frozen=True)
class AuditResult:
    """Everything ``audit.json`` holds, and where the files are."""

    model: dict[str, Any]
    dataset: dict[str, Any]
    settings: dict[str, Any]
    gradient_mode: str
    defenses: list[DefenseResult]
    recommendation: Recommendation | None
    summary: str
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    out: Path | None = None
    json_path: Path | None = None
    html_path: Path | None = None

    def defense(self, name: str) -> DefenseResult:
        return next(d for d in self.defenses if d.defense == name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("out", "json_path", "html_path"):
            data[key] = None if data[key] is None else str(data[key])
        return data

    def write_json(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return path


def _number(value: float) -> float | int:
    """A strength as it is pasted: 4 significant digits, never weaker than measured by more
    than that rounding."""
    if isinstance(value, bool) or not isinstance(value, float):
        return value
    rounded = float(f"{value:.4g}")
    return int(rounded) if rounded.is_integer() and abs(rounded) < 1e15 else rounded


def _kwargs(options: dict[str, Any]) -> str:
    return "".join(f", {key}={_number(value)!r}" for key, value in options.items())


def recommendation_for(defense: DefenseResult, scale: float, lr: float, steps: int) -> Recommendation:
    options = {k: _number(v) for k, v in defense.options.items()}
    library = f"defense = Defense.from_config({defense.defense!r}{_kwargs(options)})"
    client = "app = ClientApp(mods=[DefenseMod()])"
    server = (f"strategy = DefendedStrategy(FedAvg(), {defense.defense!r}, scale={_number(scale)!r}"
              f"{_kwargs(options)})")
    cost = "" if defense.accuracy_cost is None else f", {100 * defense.accuracy_cost:+.1f} points of accuracy " \
                                                    f"against no defense"
    reason = (f"{defense.defense} holds at every audited batch size at the least accuracy cost of the defenses that "
              f"hold{cost}; scale is the clients' learning rate x local steps per round ({lr:g} x {steps} in this "
              f"audit's training run): set it to yours")
    return Recommendation(defense.defense, options, defense.accuracy, reason, library, client, server)


def parse_recommendation(line: str) -> tuple[str, dict[str, Any]]:
    """The defense name and options of a ``Defense.from_config(...)`` or ``DefendedStrategy(...)``
    line, read back with ``ast`` (the test that a recommendation is valid code)."""
    tree = ast.parse(line.strip())
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("from_config", "DefendedStrategy"))
    names = [ast.literal_eval(arg) for arg in call.args if isinstance(arg, ast.Constant)]
    options = {str(kw.arg): ast.literal_eval(kw.value) for kw in call.keywords if kw.arg not in ("scale", "keys")}
    return str(names[0]), options


def _sentence(result: DefenseResult, margin_db: float, margin_ssim: float, reference: float | None) -> str:
    setting = ", ".join(f"{k}={_number(v)}" for k, v in result.options.items())
    name = f"{result.defense} ({setting})" if setting else result.defense
    failing = [b for b in result.batches if not b.holds] or result.batches
    worst = max(failing, key=lambda b: b.psnr - b.floor_psnr)
    where = f"at batch size {worst.batch_size}"
    numbers = (f"the strongest attack ({worst.psnr_attack}) reconstructs to {worst.psnr:.1f} dB PSNR / "
               f"{worst.ssim:.2f} SSIM {where}, against a no-gradient floor of {worst.floor_psnr:.1f} dB / "
               f"{worst.floor_ssim:.2f}")
    accuracy = ""
    if result.accuracy is not None:
        accuracy = f"; accuracy {100 * result.accuracy:.1f}%"
        if reference is not None and result.defense != "none":
            accuracy += f" ({100 * (result.accuracy - reference):+.1f} points against no defense)"
    if result.holds:
        return f"{name} holds: {numbers}, within {margin_db:g} dB / {margin_ssim:g}{accuracy}."
    unmet = result.strength is not None and result.strength.get("met") is False
    why = " even at the strongest setting searched" if unmet else ""
    psnr_over = worst.psnr > worst.floor_psnr + margin_db
    ssim_over = worst.ssim > worst.floor_ssim + margin_ssim
    over = ("more than {db} dB and {ssim} SSIM above it" if psnr_over and ssim_over else
            "its PSNR more than {db} dB above it" if psnr_over else "its SSIM more than {ssim} above it")
    return f"{name} leaks{why}: {numbers}, {over.format(db=f'{margin_db:g}', ssim=f'{margin_ssim:g}')}{accuracy}."


def collect(store: ResultStore, resolved: dict[str, Any], defenses: list[str], margin_db: float,
            margin_ssim: float) -> list[DefenseResult]:
    """Per defense, the worst case per batch size, the training result and the verdict."""
    attacked: dict[tuple[str, int], list[tuple[dict, dict]]] = {}
    trained: dict[str, dict[str, Any]] = {}
    options: dict[str, dict[str, Any]] = {}
    for entry in resolved["tasks"]:
        found = store.get(entry["key"])
        assert found is not None
        options.setdefault(entry["defense"], found.config.get("defense_options", {}))
        if entry["role"] == "train":
            trained[entry["defense"]] = found.result
        else:
            attacked.setdefault((entry["defense"], entry["batch_size"]), []).append((entry, found.result))
    strengths = {key.rpartition("/")[2]: value for key, value in resolved["strengths"].items()}
    reference = trained.get("none", {}).get("accuracy")
    results = []
    for defense in defenses:
        batches = []
        for (name, size), pairs in sorted(attacked.items(), key=lambda item: item[0][1]):
            if name != defense:
                continue
            worst = worst_case(pairs)
            assert worst is not None
            batches.append(BatchResult(
                size, len(pairs[0][1]["targets"]), worst.psnr, worst.psnr_attack, worst.ssim, worst.ssim_attack,
                worst.floor_psnr, worst.floor_ssim, worst.label_accuracy, worst.holds(margin_db, margin_ssim),
                [{"attack": attack_label(e), "psnr": r["psnr_mean"], "ssim": r["ssim_mean"]} for e, r in pairs]))
        train = trained.get(defense)
        accuracy = train["accuracy"] if train else None
        strength = strengths.get(defense)
        result = DefenseResult(
            defense, options.get(defense, {}), strength, batches, accuracy, train["art_s"] if train else None,
            None if accuracy is None or reference is None else reference - accuracy,
            all(b.holds for b in batches), "")
        results.append(_with_verdict(result, margin_db, margin_ssim, reference))
    return results


def _with_verdict(result: DefenseResult, margin_db: float, margin_ssim: float,
                  reference: float | None) -> DefenseResult:
    from dataclasses import replace

    return replace(result, verdict=_sentence(result, margin_db, margin_ssim, reference))


def choose(results: list[DefenseResult], scale: float, lr: float, steps: int) -> Recommendation | None:
    """The defense (not ``none``) that holds at every batch size with the highest accuracy
    (then the shortest round); None when none holds."""
    undefended = next((r for r in results if r.defense == "none"), None)
    if undefended is not None and undefended.holds:
        return Recommendation("none", {}, undefended.accuracy, "without a defense the strongest attack already stays "
                              "within the margins of the floor: no defense is needed for this model and data",
                              "defense = Defense.from_config('none')", "app = ClientApp()", "strategy = FedAvg()")
    holding = [r for r in results if r.defense != "none" and r.holds]
    if not holding:
        return None
    best = max(holding, key=lambda r: (r.accuracy if r.accuracy is not None else -1.0,
                                       -(r.round_time_s or 0.0)))
    return recommendation_for(best, scale, lr, steps)
