"""TrainConfig and SweepConfig: every setting of a training run and of a sweep, help and checks.

``robustweights train``'s and ``sweep``'s flags are built from these fields
(their ``help`` and ``choices`` metadata); a training configuration is saved
as ``config.json`` and inside every checkpoint, a sweep's in ``sweep.json``,
so a result folder says how it was made.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from . import data as data_mod
from .errors import UserError
from .language import TEXT_DATASET
from .projected import MODES, WEIGHTS
from .registry import as_projection
from .selection import selection_field

__all__ = [
    "TrainConfig",
    "SweepConfig",
    "DEFAULT_DISTORTIONS",
    "TEXT",
    "TRAIN_DATASETS",
    "TEXT_WINDOW",
    "CLASSIFICATION_MEASURES",
    "TRAIN_MEASURES",
]

DEFAULT_DISTORTIONS = ["add-gauss:sigma=0:1.5:0.25", "power:beta=0:1:0.25"]
TEXT = TEXT_DATASET  # the dataset of robustweights.language (loaded there, not by data.load_data)
TRAIN_DATASETS = (*data_mod.DATASETS, TEXT)
TEXT_WINDOW = 128  # bytes per window of the text dataset when window is not given
CLASSIFICATION_MEASURES = ("error", "top5_error", "loss")
# the measures a run may train by (built-in names only: a run folder never names code to import)
TRAIN_MEASURES = ("auto", *CLASSIFICATION_MEASURES, "perplexity")


def _opt(help: str, choices=None, **kw):
    """A config field with its command-line help (the CLI is built from these)."""
    return field(metadata={"help": help, "choices": choices}, **kw)


_KINDS = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "list[str]": (list,),
}
_KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "list[str]": "a list of strings",
}


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.json`` and inside the checkpoint."""

    model: str = _opt(
        "registered model name (see `robustweights list`) or package.module:function", default="cnn"
    )
    width: float = _opt("multiplier for every hidden channel/unit count", default=1.0)
    dataset: str = _opt(
        "dataset (text: a UTF-8 file or folder, --data-dir, learnt byte by byte)",
        TRAIN_DATASETS,
        default="fashion-mnist",
    )
    data_dir: str | None = _opt(
        "folder (or archive) holding the dataset; default: its usual place (text: the UTF-8 "
        "file or folder to learn, no default)",
        default=None,
    )
    window: int | None = _opt(
        f"text only: bytes (tokens) per training and test window (default {TEXT_WINDOW})",
        default=None,
    )
    preprocess: str = _opt(
        "input preprocessing: standardize (fitted on training data), gcn-zca (BinaryConnect's), "
        "none (pixels in [0, 1]) or normalize:mean=M,std=S (per channel M1/M2/M3)",
        default="standardize",
    )
    augment: str = _opt(
        "data augmentation (BinaryConnect used none)", data_mod.AUGMENT, default="none"
    )
    train_subset: int | None = _opt(
        "train on a seeded random subset of this many examples", default=None
    )
    test_subset: int | None = _opt(
        "test on a seeded random subset of this many examples", default=None
    )
    val_size: int | None = _opt(
        "hold the last N training images out for validation; the network kept (best.pt) "
        "and the test error reported are those of the best validation epoch "
        "(BinaryConnect: 5000 of CIFAR-10's 50000)",
        default=None,
    )
    image_size: int | None = _opt(
        "imagefolder only: side of the square crop, pixels (default 224)", default=None
    )
    projection: str = _opt(
        "weight projection spec, e.g. sign, stoch-sign, power:beta=0.5, stoch-mult:gamma=0.5",
        default="identity",
    )
    mode: str = _opt(
        "where the projection acts: fwd+bwd (standard), fwd (output only), none (clip only)",
        MODES,
        default="fwd+bwd",
    )
    clip: str = _opt(
        "clip bound H for hidden weights after every step: a number, 'glorot' (per layer) or "
        "'none'",
        default="1",
    )
    init: str = _opt(
        "initial hidden weights: default (PyTorch's) or uniform (BinaryConnect's: each clipped "
        "weight uniform in [-H, H], the whole clip range; a weight never clipped in its layer's "
        "Glorot [-H, H], so a float network starts as its binary twins)",
        ("default", "uniform"),
        default="default",
    )
    float_first: bool = _opt(
        "leave the first weight tensor unprojected and unclipped", default=False
    )
    float_last: bool = _opt("leave the last weight tensor unprojected and unclipped", default=False)
    include: list[str] = selection_field(
        "include", "project", "float", "every floating-point parameter with 2 or more dimensions"
    )
    exclude: list[str] = selection_field("exclude", "project", "float")
    types: list[str] = selection_field("types", "project", "float")
    exclude_types: list[str] = selection_field("exclude_types", "project", "float")
    measure: str = _opt(
        "what the run is judged by (its test and validation figures, the best validation "
        "epoch): auto (perplexity for text, else error), error, top5_error, loss (of --loss) "
        "or perplexity",
        TRAIN_MEASURES,
        default="auto",
    )
    loss: str = _opt(
        "classification training loss: cross-entropy, or BinaryConnect's squared hinge",
        ("ce", "sq-hinge"),
        default="ce",
    )
    optimizer: str = _opt("optimizer", ("adam", "sgd"), default="adam")
    lr: float = _opt("initial learning rate", default=1e-3)
    lr_end: float | None = _opt(
        "final learning rate of the exp schedule (default lr/1000)", default=None
    )
    momentum: float = _opt("SGD momentum", default=0.9)
    weight_decay: float = _opt("L2 weight decay (0: none, as in BinaryConnect)", default=0.0)
    schedule: str = _opt(
        "learning-rate schedule: exp decays per epoch from lr to lr_end (BinaryConnect), "
        "cosine per step to 0",
        ("exp", "cosine", "constant"),
        default="cosine",
    )
    epochs: int = _opt("passes over the training data", default=10)
    batch_size: int = _opt("training batch size, examples", default=100)
    eval_batch_size: int = _opt("evaluation batch size, examples", default=1000)
    seed: int = _opt("seed for initialisation, data order and random projections", default=0)
    device: str = _opt("'auto' (cuda if present), 'cpu', 'cuda' or 'cuda:N'", default="auto")
    amp: bool = _opt("bf16 autocast on CUDA (no effect on CPU)", default=False)
    channels_last: bool = _opt(
        "channels-last memory format (faster convolutions on GPUs)", default=False
    )
    compile: bool = _opt(
        "torch.compile the training steps (slow first steps; for long GPU runs)", default=False
    )
    cuda_graph: bool = _opt(
        "replay each training step as one CUDA graph (GPU, Adam; the speed of small batches; "
        "not with compile or torchrun)",
        default=False,
    )
    num_workers: int = _opt("imagefolder only: data loader worker processes", default=0)
    checkpoint_every: int = _opt(
        "write checkpoint.pt (and best.pt) every N epochs and after the last; metrics.jsonl "
        "is written every epoch (a killed run resumes from the last checkpoint)",
        default=1,
    )
    bn_calibrate: int = _opt(
        "after the last epoch, re-estimate batch-norm statistics on N training batches with the "
        "evaluation weights, for networks evaluated with other weights than they trained with "
        "(random projections: stoch-sign, stoch-mult, noise); the checkpoint keeps them "
        "(0: off)",
        default=50,
    )
    out: str | None = _opt(
        "run folder for checkpoint.pt, config.json, metrics.jsonl (none: keep nothing)",
        default=None,
    )

    def __post_init__(self):
        if isinstance(self.clip, int | float) and not isinstance(
            self.clip, bool
        ):  # clip=1 from Python: "1"
            self.clip = f"{self.clip:g}"

    def validate(self) -> "TrainConfig":
        """Check every value a user (or a stranger's checkpoint) can get wrong; raises UserError
        with one line."""
        self._validate_kinds()
        as_projection(self.projection)
        data_mod.parse_preprocess(self.preprocess)
        self._validate_numbers()
        self._validate_task()
        self._validate_schedule()
        self._validate_device()
        return self

    def _validate_kinds(self) -> None:
        """Each field of its declared kind, and among its choices where it has them."""
        for f in dataclasses.fields(self):
            v, kind = getattr(self, f.name), f.type.replace(" | None", "")
            if v is None and "None" in f.type:
                continue
            ok = isinstance(v, _KINDS[kind]) and not (
                kind in ("int", "float") and isinstance(v, bool)
            )
            if not ok or (kind == "list[str]" and not all(isinstance(x, str) for x in v)):
                raise UserError(f"{f.name} must be {_KIND_WORDS[kind]}, not {v!r}")
            choices = f.metadata.get("choices")
            if choices and v not in choices:
                raise UserError(f"{f.name} {v!r} is not one of: {', '.join(choices)}")

    def _validate_numbers(self) -> None:
        """Sizes and rates positive and finite; the seed and the clip bound in range."""
        positive = {
            "width": self.width,
            "lr": self.lr,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "checkpoint_every": self.checkpoint_every,
            "eval_batch_size": self.eval_batch_size,
        }
        for name, v in positive.items():
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise UserError(f"{name} must be a positive number, not {v!r}")
        for name in ("train_subset", "test_subset", "image_size", "lr_end", "val_size", "window"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise UserError(
                    f"{name} must be positive, not {v!r}"
                    + (" (omit it for no validation split)" if name == "val_size" else "")
                )
        for name in ("momentum", "weight_decay", "bn_calibrate", "num_workers"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise UserError(f"{name} must be zero or positive, not {v!r}")
        if not 0 <= self.seed < 2**63:
            raise UserError(f"seed must be an integer in [0, 2**63), not {self.seed!r}")
        if self.clip not in ("glorot", "none"):
            try:
                ok = float(self.clip) > 0 and math.isfinite(float(self.clip))
            except ValueError:
                ok = False
            if not ok:
                raise UserError(
                    f"clip must be a positive number, 'glorot' or 'none', not {self.clip!r}"
                )

    def _validate_schedule(self) -> None:
        if self.lr_end is not None and self.schedule != "exp":
            raise UserError(
                f"lr_end is the end of the exp schedule; schedule {self.schedule} does not use it"
            )
        if self.lr_end is not None and self.lr_end > self.lr:
            raise UserError(
                f"lr_end {self.lr_end:g} is above lr {self.lr:g}: the exp schedule decays"
            )

    def _validate_device(self) -> None:
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise UserError(f"device must be auto, cpu, cuda or cuda:N, not {self.device!r}")
        if self.cuda_graph and (
            self.compile
            or self.optimizer != "adam"
            or not torch.cuda.is_available()
            or self.device == "cpu"
        ):
            raise UserError(
                "cuda_graph needs a GPU and Adam, and replaces compile (the graph holds the whole "
                "step)"
            )
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {self.device!r} asked for, but this machine has no CUDA GPU")

    def _validate_task(self) -> None:
        """The measure, loss and window fit the dataset: text trains by perplexity with its own
        loss, the image datasets by a classification measure."""
        text = self.dataset == TEXT
        if text and self.measure not in ("auto", "perplexity"):
            raise UserError(
                f"measure {self.measure!r} judges a classifier; the text dataset is judged by "
                "perplexity (auto)"
            )
        if not text and self.measure == "perplexity":
            raise UserError(
                f"perplexity judges a language model; dataset {self.dataset} is judged by error, "
                "top5_error or loss"
            )
        if text and self.loss != "ce":
            raise UserError(
                f"loss {self.loss!r} is a classification loss; text trains on next-byte "
                "cross-entropy (leave loss= out)"
            )
        if not text and self.window is not None:
            raise UserError(f"window applies only to the text dataset, not {self.dataset}")
        if text:
            image_only = {
                "preprocess": self.preprocess != "standardize",
                "augment": self.augment != "none",
                "train_subset": self.train_subset is not None,
                "test_subset": self.test_subset is not None,
                "val_size": self.val_size is not None,
                "image_size": self.image_size is not None,
            }
            given = [name for name, set_ in image_only.items() if set_]
            if given:
                raise UserError(
                    f"{given[0]} does not apply to the text dataset (its bytes are the tokens; "
                    "the last 10% is the test text, the 10% before it the validation text)"
                )

    def text_window(self) -> int:
        """The window of the text dataset: ``window``, or :data:`TEXT_WINDOW`."""
        return self.window if self.window is not None else TEXT_WINDOW

    @property
    def clip_bound(self) -> "float | str | None":
        return (
            None
            if self.clip == "none"
            else ("glorot" if self.clip == "glorot" else float(self.clip))
        )

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class SweepConfig:
    """A sweep of one network; saved in ``sweep.json`` so that a restarted sweep can check it is the
    same."""

    checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "checkpoint.pt (or its run folder) from `robustweights train`",
            "positional": True,
        },
    )
    model_factory: str | None = _opt(
        "your own model: package.module:function that builds it", default=None
    )
    state_dict: str | None = _opt(
        "with --model-factory: a file holding the model's state_dict", default=None
    )
    dataset: str | None = _opt("with --model-factory: dataset to test on", default=None)
    data: str | None = _opt(
        "your own data instead of --dataset: package.module:function, called with no arguments, "
        "returning a DataLoader of (inputs, targets) batches to measure on, or a dict with "
        "'test' and optionally 'train' (for --bn-reestimate/--bn-calibrate)",
        default=None,
    )
    measure: str | None = _opt(
        "what a network is judged by: error, top5_error, loss, perplexity, mse, or "
        "package.module:function (default: a checkpoint's own measure; for your own model "
        "perplexity on --dataset text, else error)",
        default=None,
    )
    data_dir: str | None = _opt("dataset folder if not where training found it", default=None)
    preprocess: str = _opt(
        "with --model-factory: the input preprocessing your model was trained with: "
        "standardize, gcn-zca, none (pixels in [0, 1]) or normalize:mean=M,std=S "
        "(per channel M1/M2/M3)",
        default="standardize",
    )
    distortions: list[str] = field(
        default_factory=lambda: list(DEFAULT_DISTORTIONS),
        metadata={
            "flag": "--distortion",
            "help": "a distortion grid, repeatable: add-gauss:sigma=0,0.5,1 or "
            "power:beta=0:1:0.1 (range, stop included) or quant:bits=1..8 (default: "
            + " and ".join(DEFAULT_DISTORTIONS)
            + ")",
        },
    )
    trials: int = _opt("independent draws per strength of a random distortion", default=5)
    seed: int = _opt("sweep seed; each cell's seed derives from it and the cell", default=0)
    on: str = _opt(
        "which weights to distort: auto (those the network runs with: a sign network's binary "
        "weights, a stoch-sign or float network's hidden ones), hidden, or projected (the weights "
        "evaluation uses, as auto; the sweep says which it distorted)",
        WEIGHTS,
        default="auto",
    )
    keep: list[str] = field(
        default_factory=list,
        metadata={
            "help": "leave weights undistorted, repeatable: first, last, a parameter or module "
            "name, or a pattern"
        },
    )
    include: list[str] = selection_field(
        "include",
        "distort",
        "undistorted",
        "every projected weight; for your own model every floating-point "
        "parameter with 2 or more dimensions",
    )
    exclude: list[str] = selection_field("exclude", "distort", "undistorted")
    types: list[str] = selection_field("types", "distort", "undistorted")
    exclude_types: list[str] = selection_field("exclude_types", "distort", "undistorted")
    bn_reestimate: int = _opt(
        "re-estimate batch-norm statistics on N training batches per cell (0: off)", default=0
    )
    bn_calibrate: int = _opt(
        "before the sweep, re-estimate batch-norm statistics once, with the undistorted "
        "evaluation weights, on N training batches (0: off; the baseline is then measured "
        "with them too)",
        default=0,
    )
    split: str = _opt("split to test on", ("test", "train"), default="test")
    test_subset: int | None = _opt(
        "test on a seeded subset of this many examples (default: a checkpoint's own "
        "test subset, as evaluate uses; else the whole split)",
        default=None,
    )
    batch_size: int = _opt("evaluation batch size", default=1000)
    fuse_trials: str | int = _opt(
        "measure this many trials of a strength as one fused network (torch.func.vmap over the "
        "trials' distorted weights, each drawn as alone: the logits agree to float rounding; "
        "faster for small networks on a GPU): auto (up to 8 on CUDA, none on a CPU) or a number "
        "(1: one at a time); batch-norm re-estimation, a whole-pass measure and a network vmap "
        "cannot run are measured one at a time, and the sweep says so (default: 1, until a GPU "
        "run measures auto faster with the same counts)",
        default=1,
    )
    target_error: float | None = _opt(
        "target for the effective-bits summary, in the measure's units (a fraction for an "
        "error; default: undistorted + 1 point for a percentage, else a hundredth of it, on "
        "the worse side)",
        default=None,
    )
    device: str = _opt("auto, cpu, cuda or cuda:N", default="auto")
    out: str = _opt("result folder (results.csv, results.json, sweep.json)", default="runs/sweep")

    # Fields that a restarted sweep may change without changing any number.
    RESUMABLE = (
        "data_dir",
        "device",
        "out",
        "target_error",
        "batch_size",
        "fuse_trials",
        "checkpoint",
        "state_dict",
    )
    # (checkpoint, state_dict: a path spelled another way, a folder moved; checkpoint_sha256 holds
    # the identity)
