"""gradguard: protect federated-learning clients against gradient leakage attacks, and measure
how well any defense does it.

The public API, re-exported here:

- data: :func:`load_dataset`, :class:`ImageDataset`, :func:`partition_iid`, :func:`partition_dirichlet`
- models: :func:`build_model`, :func:`model_for`
- gradients: :func:`batch_gradient`, :func:`per_sample_gradients`
- metrics: :func:`psnr`, :func:`ssim`, :func:`score_reconstruction`, :func:`label_accuracy`
- attacks: :class:`Attack` (``Attack.from_config("dlg").reconstruct(...)``), :data:`ATTACKS`
- defenses: :class:`Defense` (``Defense.from_config("graddefense").defend(...)``), :data:`DEFENSES`
- federated simulation: :func:`simulate`, :class:`SimulationConfig`, :class:`History`
- audits of your own model and data: :func:`audit` -> :class:`AuditResult` (docs/audit.md)
"""

from .attacks import ATTACKS, Attack, AttackConfig, Reconstruction
from .auditing import AuditResult, audit
from .data import ImageDataset, load_dataset, partition_dirichlet, partition_iid
from .defenses import DEFENSES, Compensator, Defense, DefenseContext
from .errors import ConfigError, DatasetFormatError, DatasetNotFoundError, GradguardError
from .fl import History, SimulationConfig, simulate
from .grads import batch_gradient, per_sample_gradients
from .metrics import label_accuracy, psnr, score_reconstruction, ssim
from .models import build_model, model_for

__version__ = "0.1.0"

__all__ = [
    "ATTACKS", "Attack", "AttackConfig", "AuditResult", "Compensator", "ConfigError", "DEFENSES", "DatasetFormatError",
    "DatasetNotFoundError", "Defense", "DefenseContext", "GradguardError", "History", "ImageDataset",
    "Reconstruction", "SimulationConfig", "audit", "batch_gradient", "build_model", "label_accuracy", "load_dataset",
    "model_for", "partition_dirichlet", "partition_iid", "per_sample_gradients", "psnr", "score_reconstruction",
    "simulate", "ssim",
]
