"""The networks that robustweights trains, and a registry to build them by name.

Every model is a plain ``nn.Module`` made only of standard layers (``nn.Conv2d``,
``nn.Linear``, batch norm, ReLU, pooling, ``nn.Flatten``). The weight projection
(binarization etc.) finds conv/linear weights by type, and treats the first such
layer in ``model.modules()`` order as the input layer and the last one as the
output layer; so every model here constructs its layers in forward order.

    model = create_model("cnn", num_classes=10, in_shape=(1, 28, 28), width=0.5)
    model = create_model("mypkg.nets:MyNet", num_classes=100)  # a user's own

``width`` multiplies every hidden channel/unit count: ``c = round(c0 * width)``.
Default PyTorch initialization is used throughout, so a torch seed fixes the
initial weights.
"""

import fnmatch
import inspect
import math
from typing import Callable

import torch
import torch.nn as nn

from .errors import UserError
from .factories import import_named

# -----------------------------------------------------------------------------
# registry

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator: make a model factory available to ``create_model(name)``."""
    if not isinstance(name, str) or not name or ":" in name:
        # ':' is reserved for the "package.module:function" form
        raise UserError(f"model name {name!r} is not allowed; use a non-empty string without ':'")

    def decorator(factory):
        old = _MODELS.get(name)
        same = old is not None and (old.__module__, old.__qualname__) == (
            factory.__module__,
            factory.__qualname__,
        )  # a module reload: not a clash
        if old is not None and not same:
            raise UserError(
                f"model name {name!r} is already registered by "
                f"{old.__module__}.{old.__qualname__}; choose another name"
            )
        _MODELS[name] = factory
        return factory

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """The registered model names that match a shell-style ``pattern``, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def _resolve(name: str) -> Callable[..., nn.Module]:
    """A registered factory, or the attribute named by ``package.module:function``."""
    if not isinstance(name, str):
        raise UserError(
            f"model name {name!r} is not a string; use one of "
            f"{', '.join(list_models())}, or package.module:function"
        )
    if name in _MODELS:
        return _MODELS[name]
    if ":" not in name:
        raise UserError(
            f"unknown model {name!r}; use one of "
            f"{', '.join(list_models())}, or package.module:function"
        )
    factory = import_named(name, f"model {name!r}")
    if not callable(factory):
        raise UserError(f"{name!r} is not callable: name a function or nn.Module class")
    return factory


def check_model(name: str, width=None) -> None:
    """The checks that need no data: a known model (or an importable factory) and a width > 0."""
    _resolve(name)
    if width is not None:
        _check_width(width)


def _accepted(factory, kwargs: dict) -> dict:
    """The subset of ``kwargs`` that ``factory``'s signature takes by keyword."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins/C callables: no signature to read
        return kwargs
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return kwargs
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    in_shape: tuple[int, ...] = (3, 32, 32),
    width: float = 1.0,
    **kwargs,
) -> nn.Module:
    """Build model ``name`` (registered, or ``package.module:function``).

    Arguments whose value is None are dropped first, so that unset command-line
    options leave a model's own defaults alone. ``num_classes``, ``in_shape`` and
    ``width`` are passed only if the factory accepts them; any other keyword
    must be accepted, so that a misspelt option fails instead of being ignored.
    ``in_shape`` is one example's shape: ``(C, H, W)`` for images, ``(T,)`` for the windows of
    the text dataset (a factory checks the shape it needs).
    """
    factory = _resolve(name)
    if num_classes is not None:
        _check_num_classes(num_classes)
    if in_shape is not None:
        in_shape = _check_shape(in_shape)
    if width is not None:
        _check_width(width)
    common = dict(num_classes=num_classes, in_shape=in_shape, width=width)
    common = {k: v for k, v in common.items() if v is not None}
    extra = {k: v for k, v in kwargs.items() if v is not None}
    unknown = sorted(extra.keys() - _accepted(factory, extra).keys())
    if unknown:
        raise UserError(
            f"model {name!r} takes no option {', '.join(unknown)}; it takes "
            f"{', '.join(_option_names(factory)) or 'no options'}"
        )
    model = factory(**_accepted(factory, common), **extra)
    if not isinstance(model, nn.Module):
        raise UserError(
            f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module; "
            f"its factory must return an nn.Module"
        )
    return model


def check_factory_allowed(model, allowed, where, how: str) -> None:
    """A run's model named as ``package.module:function`` is imported (its code run) only when the
    user named it again (``allowed``): a checkpoint from a stranger must not choose what code runs.
    ``how`` says how to."""
    if isinstance(model, str) and ":" in model and allowed != model:
        raise UserError(f"{where} was trained with model factory {model!r}; {how}")


def load_weights(model: nn.Module, state_dict: dict, source: str) -> None:
    """``model.load_state_dict(state_dict)``, or one line naming what does not fit.

    The line names the first missing and unexpected keys and mismatched shapes
    (PyTorch's own message is many lines, and its first says only where). Keys
    that all carry the prefix ``DistributedDataParallel`` (``module.``) or
    ``torch.compile`` (``_orig_mod.``) adds are read without it when that makes
    them fit.
    """
    state_dict = check_fits(model.state_dict(), state_dict, source)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise UserError(
            f"{source} does not fit the model: {' '.join(lines[1:2] or lines[:1])[:300]}"
        ) from None


def check_fits(own: dict, state_dict: dict, source: str) -> dict:
    """``state_dict`` (unwrapped, see :func:`load_weights`) if its keys and shapes are those of
    ``own`` (a model's state dict, possibly of a model built on the meta device), else one line
    naming what does not fit."""
    state_dict = _unwrapped(state_dict, own.keys())
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs the model's {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict
        and hasattr(state_dict[k], "shape")
        and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    shapes += [
        f"{k} complex, the model's real (its imaginary part would be dropped)"
        for k, v in own.items()
        if isinstance(state_dict.get(k), torch.Tensor)
        and state_dict[k].is_complex()
        and not v.is_complex()
    ]
    parts = []
    for what, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatch", shapes),
    ):
        if items:
            parts.append(
                f"{what}: {', '.join(items[:3])}"
                + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
            )
    if parts:
        raise UserError(f"{source} does not fit the model ({len(own)} keys): " + "; ".join(parts))
    return state_dict


def _unwrapped(state_dict: dict, own) -> dict:
    """``state_dict`` without the wrapper prefixes on every key, if it then has exactly the keys
    ``own``."""
    own, sd = set(own), state_dict
    while set(sd) != own:
        prefix = next(
            (p for p in ("module.", "_orig_mod.") if sd and all(k.startswith(p) for k in sd)), None
        )
        if prefix is None:
            return state_dict
        sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _option_names(factory) -> list[str]:
    """The model-specific keywords of ``factory``, for error messages."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return []
    common = {"num_classes", "in_shape", "width"}
    return [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in common
    ]


# -----------------------------------------------------------------------------
# argument checks (the built-in factories check too, so they are safe to call directly)


def _check_num_classes(num_classes) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"num_classes {num_classes!r} is not allowed; use an integer >= 2")


def _check_shape(in_shape) -> tuple[int, ...]:
    """An example's shape: one or more positive integers."""
    ok = (
        isinstance(in_shape, (tuple, list))
        and len(in_shape) >= 1
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in in_shape)
    )
    if not ok:
        raise UserError(
            f"in_shape {in_shape!r} is not allowed; use positive integers ((C, H, W) for images)"
        )
    return tuple(in_shape)


def _check_in_shape(in_shape) -> tuple[int, int, int]:
    ok = (
        isinstance(in_shape, (tuple, list))
        and len(in_shape) == 3
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in in_shape)
    )
    if not ok:
        raise UserError(
            f"in_shape {in_shape!r} is not allowed; use three positive integers (C, H, W)"
        )
    return tuple(in_shape)


def _check_width(width) -> None:
    ok = (
        isinstance(width, (int, float))
        and not isinstance(width, bool)
        and math.isfinite(width)
        and width > 0
    )
    if not ok:
        raise UserError(f"width {width!r} is not allowed; use a finite number > 0")


def _check_args(
    model: str, num_classes, in_shape, width, multiple: int = 1, smallest: int = 1
) -> tuple[int, int, int]:
    """Check the common arguments; H and W must be multiples of ``multiple`` (the total
    pooling, so that the flattened size is exact) and at least ``smallest``."""
    _check_num_classes(num_classes)
    _check_width(width)
    c, h, w = _check_in_shape(in_shape)
    if h % multiple or w % multiple or min(h, w) < smallest:
        raise UserError(
            f"in_shape {(c, h, w)!r} does not fit {model}; H and W must be "
            f"multiples of {multiple} and at least {smallest}"
        )
    return c, h, w


def _scaled(counts, width: float, model: str) -> list[int]:
    """``round(c * width)`` for each base channel/unit count, refusing a layer left with 0."""
    smallest = min(counts)
    if round(smallest * width) < 1:  # round(x) >= 1 exactly when x > 0.5
        raise UserError(
            f"width {width!r} leaves 0 of {smallest} channels in a layer of {model}; "
            f"use width > {0.5 / smallest:g}"
        )
    return [round(c * width) for c in counts]


def _fc_out(c_in: int, c_out: int, out_bn: bool) -> list[nn.Module]:
    """Output Linear, with BinaryConnect's batch norm on the logits if ``out_bn``."""
    return [nn.Linear(c_in, c_out)] + ([nn.BatchNorm1d(c_out)] if out_bn else [])


# -----------------------------------------------------------------------------
# mlp, cnn, bc-vgg: plain stacks, so nn.Sequential reads top to bottom


@register_model("mlp")
def mlp(
    num_classes: int = 10,
    in_shape=(1, 28, 28),
    width: float = 1.0,
    hidden: tuple[int, ...] = (512, 512),
    out_bn: bool = True,
) -> nn.Module:
    """Multi-layer perceptron: (Linear, BN, ReLU) per hidden layer, then Linear (+ BN)."""
    c, h, w = _check_args("mlp", num_classes, in_shape, width)
    if not isinstance(hidden, (tuple, list)) or not all(
        isinstance(u, int) and not isinstance(u, bool) and u >= 1 for u in hidden
    ):
        raise UserError(f"hidden {hidden!r} is not allowed; use a sequence of positive integers")
    layers: list[nn.Module] = [nn.Flatten()]  # (B, C, H, W) -> (B, C*H*W)
    n_in = c * h * w
    for u in _scaled(hidden, width, "mlp") if hidden else []:
        layers += [nn.Linear(n_in, u), nn.BatchNorm1d(u), nn.ReLU()]
        n_in = u
    return nn.Sequential(*layers, *_fc_out(n_in, num_classes, out_bn))  # (B, num_classes)


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    """3x3 conv (same size) + BN + ReLU; no conv bias, as BN's shift replaces it."""
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


@register_model("cnn")
def cnn(
    num_classes: int = 10, in_shape=(1, 28, 28), width: float = 1.0, out_bn: bool = True
) -> nn.Module:
    """Small CNN for 28x28 grey images, cheap enough to train on a laptop CPU.

    About 4.6M multiply-adds per 1x28x28 image at width 1 (conv2 is 3.6M of it).
    """
    c, h, w = _check_args("cnn", num_classes, in_shape, width, multiple=4, smallest=8)
    c1, c2, f = _scaled((32, 64, 256), width, "cnn")
    return nn.Sequential(
        *_conv_bn_relu(c, c1),
        nn.MaxPool2d(2),  # (B, c1, H/2, W/2)
        *_conv_bn_relu(c1, c2),
        nn.MaxPool2d(2),  # (B, c2, H/4, W/4)
        nn.Flatten(),  # (B, c2*H/4*W/4)
        nn.Linear(c2 * (h // 4) * (w // 4), f),
        nn.BatchNorm1d(f),
        nn.ReLU(),  # (B, f)
        *_fc_out(f, num_classes, out_bn),  # (B, num_classes)
    )


@register_model("bc-vgg")
def bc_vgg(
    num_classes: int = 10, in_shape=(3, 32, 32), width: float = 1.0, out_bn: bool = True
) -> nn.Module:
    """BinaryConnect's CIFAR-10 net (Courbariaux et al. 2015), ~14.0M weights at width 1.

    (2x128C3)-MP2-(2x256C3)-MP2-(2x512C3)-MP2-(2x1024FC)-num_classes, with batch
    norm after every layer, the output layer included.
    """
    c, h, w = _check_args("bc-vgg", num_classes, in_shape, width, multiple=8, smallest=8)
    c1, c2, c3, f = _scaled((128, 256, 512, 1024), width, "bc-vgg")
    return nn.Sequential(
        *_conv_bn_relu(c, c1),
        *_conv_bn_relu(c1, c1),
        nn.MaxPool2d(2),  # (B, c1, H/2, W/2)
        *_conv_bn_relu(c1, c2),
        *_conv_bn_relu(c2, c2),
        nn.MaxPool2d(2),  # (B, c2, H/4, W/4)
        *_conv_bn_relu(c2, c3),
        *_conv_bn_relu(c3, c3),
        nn.MaxPool2d(2),  # (B, c3, H/8, W/8)
        nn.Flatten(),  # (B, c3*H/8*W/8)
        nn.Linear(c3 * (h // 8) * (w // 8), f),
        nn.BatchNorm1d(f),
        nn.ReLU(),  # (B, f)
        nn.Linear(f, f),
        nn.BatchNorm1d(f),
        nn.ReLU(),  # (B, f)
        *_fc_out(f, num_classes, out_bn),  # (B, num_classes)
    )


# -----------------------------------------------------------------------------
# resnet18


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut (He et al. 2016); 1x1 conv + BN shortcut if the shape changes.

    Submodules are defined in forward order so that ``modules()`` visits them that way.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu = nn.ReLU()

    def forward(self, x):  # (B, c_in, H, W)
        y = self.relu(self.bn1(self.conv1(x)))  # (B, c_out, H/s, W/s)
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))  # (B, c_out, H/s, W/s)


class ResNet18(nn.Module):
    """ResNet-18: stem, four stages of two BasicBlocks, global average pool, Linear.

    The "cifar" stem (3x3 conv, stride 1, no pool) keeps small images' resolution;
    the "imagenet" stem (7x7 stride 2 conv + 3x3 stride 2 max-pool) quarters it.
    """

    def __init__(self, num_classes: int, in_channels: int, width: float, stem: str):
        super().__init__()
        c = _scaled((64, 128, 256, 512), width, "resnet18")
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, c[0], 3, padding=1, bias=False),
                nn.BatchNorm2d(c[0]),
                nn.ReLU(),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, c[0], 7, 2, padding=3, bias=False),
                nn.BatchNorm2d(c[0]),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        blocks, c_in = [], c[0]
        for i, c_out in enumerate(c):
            stride = 1 if i == 0 else 2  # each later stage halves H and W
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c[-1], num_classes)

    def forward(self, x):  # (B, C, H, W)
        x = self.blocks(self.stem(x))  # (B, 512w, H/8, W/8) cifar, (B, 512w, H/32, W/32) imagenet
        x = self.flatten(self.pool(x))  # (B, 512w)
        return self.fc(x)  # (B, num_classes)


@register_model("resnet18")
def resnet18(
    num_classes: int = 10, in_shape=(3, 32, 32), width: float = 1.0, stem: str = "auto"
) -> nn.Module:
    """ResNet-18; ``stem="auto"`` picks the imagenet stem when H >= 64, else the cifar one."""
    c, h, w = _check_args("resnet18", num_classes, in_shape, width)
    if stem not in ("auto", "cifar", "imagenet"):
        raise UserError(f"stem {stem!r} is not allowed; use auto, cifar or imagenet")
    if stem == "auto":
        stem = "imagenet" if h >= 64 else "cifar"
    return ResNet18(num_classes, c, width, stem)
