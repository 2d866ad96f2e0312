"""robustweights: train networks with projected weights and stress-test any network's weights.

Python API (the command line ``robustweights`` is a thin layer over it)::

    import robustweights as rw
    t = rw.transform("power:beta=0.5")                        # a weight transform
    result = rw.train(rw.TrainConfig(model="cnn", projection="sign", epochs=3, out="runs/sign"))
    model, config = rw.load("runs/sign")                       # hidden weights, ready to evaluate
    rw.evaluate(model, config)                                 # {"error": ..., "loss": ..., ...}
    with rw.distort(model, "add-gauss:sigma=0.5", torch.Generator().manual_seed(0)):
        rw.evaluate(model, config)                             # weights restored on exit

The method is Merolla et al. 2016, "Deep neural networks are robust to weight
binarization and other non-linear distortions" (arXiv 1606.01981).
"""

from . import language  # registers the `causal-lm` model
from .bake import bake, bake_model, export_run, load_baked, save_baked
from .checkpoints import load
from .config import TrainConfig
from .errors import UserError
from .measures import Measure, get_measure, list_measures, measure_split, register_measure
from .models import create_model, list_models, register_model
from .projected import attach, clip_, coverage, detach, distort, select, sites, use_weights
from .sweeps import SweepConfig, run_sweep, sweep
from .training import TrainResult, evaluate, train
from .transforms import Transform, list_transforms, register_transform, transform

__version__ = "0.1.0"

__all__ = [
    "UserError",
    "Transform",
    "transform",
    "list_transforms",
    "register_transform",
    "attach",
    "detach",
    "clip_",
    "coverage",
    "distort",
    "select",
    "sites",
    "use_weights",
    "create_model",
    "list_models",
    "register_model",
    "TrainConfig",
    "TrainResult",
    "train",
    "load",
    "evaluate",
    "SweepConfig",
    "sweep",
    "run_sweep",
    "bake",
    "bake_model",
    "save_baked",
    "load_baked",
    "export_run",
    "Measure",
    "get_measure",
    "list_measures",
    "measure_split",
    "register_measure",
    "language",
    "report",
    "reproduce",
]


def report(*args, **kwargs):
    """Figures and tables from sweep result folders; see :func:`robustweights.reports.report`."""
    from .reports import report as _report

    return _report(*args, **kwargs)


def reproduce(*args, **kwargs):
    """Reproduce an experiment of the paper end to end.

    See :func:`robustweights.paper.experiments.reproduce`."""
    from .paper.experiments import reproduce as _reproduce

    return _reproduce(*args, **kwargs)
