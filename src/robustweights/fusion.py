"""Several networks of one architecture fused into one wider network (horizontal fusion, as HFTA).

K networks of the same architecture (plain models, each with its own projection attached) become
one network whose activations hold the K networks' side by side on dimension 1 (``(B, K*C, H, W)``,
``(B, K*F)``): every ``Conv2d`` becomes one convolution grouped by network (``groups * K``),
every batch norm one over ``K*C`` channels (a channel's statistics are its own, so each
network's), every ``Linear`` a batched matrix product (weight ``(K, out, in)``,
``torch.baddbmm``), and the layers that act per channel or per element (ReLU, pooling,
``Flatten``, a residual sum) are shared. (Wang et al., Horizontally Fused Training Array, MLSys
2021.)

    fused = fuse([m0, m1, m2])                 # attached plain models of one architecture
    out = fused(torch.cat([x0, x1, x2], 1))    # (B, 3 * classes)
    split_logits(out, 3)                       # (B, 3, classes): network k's logits at [:, k]
    network_state(fused, k)                    # network k's state_dict, in its plain model's keys
    load_network(fused, k, state)              # and back
    clip_(fused)                               # each network's hidden weights to its own [-H, H]

Network ``k``'s slice of a fused weight is projected by network ``k``'s own
:class:`~robustweights.attachment.Site` (transform, ``H``, mode, generator) with the
straight-through gradient, as :mod:`robustweights.attachment` does for the plain network: a random
projection of network ``k`` draws from network ``k``'s generator, in the order its plain forward
draws, so the fused draws are the separate ones. The fused network's parameter and buffer names
are the plain model's (one tensor holds the K networks'), so optimizer state maps position by
position (:func:`split_optimizer_state`, :func:`merged_optimizer_state`). With a loss that is the
sum of the K networks' losses each slice gets its own network's gradient; Adam, SGD, weight decay
and the clip act element by element, so a fused training equals K separate ones within float
rounding (tests/test_fusion.py checks it step by step).

What can be fused: ``nn.Sequential``, ``Conv2d``, ``Linear``, ``BatchNorm1d/2d``, ``ReLU``,
``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``Flatten`` (from dimension 1), ``Identity``
and the built-in ``resnet18``'s modules; anything else is refused with one line naming it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import models
from .errors import UserError

__all__ = [
    "fuse",
    "networks",
    "network_state",
    "load_network",
    "split_logits",
    "clip_",
    "split_optimizer_state",
    "merged_optimizer_state",
    "FusedConv2d",
    "FusedLinear",
]

# act per channel or per element: the fused network shares them
_SHARED = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity)
# containers whose forward only chains their children, sums and flattens (channel-wise)
_CONTAINERS = (nn.Sequential, models.BasicBlock, models.ResNet18)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class Fusion:
    """What a fused network records of its fusion: ``networks`` (K) and, for every state key, how
    the K networks' tensors are held: ``stack`` (dimension 0 of length K), ``cat`` (concatenated
    on dimension 0) or ``shared`` (one value for all, as a batch norm's batch count)."""

    networks: int
    kinds: dict


def _plain_class(m: nn.Module) -> type:
    return getattr(type(m), "_rw_class", type(m))


class _Through(torch.autograd.Function):
    """``make(w)`` forward (computed without a graph); the gradient passes to ``w`` unchanged."""

    @staticmethod
    def forward(ctx, w, make):
        return make(w)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _acts(site, training: bool) -> bool:
    """Whether network ``site``'s projection acts on its slice now (as ``Site.current`` decides)."""
    return (
        site is not None
        and not site.plain
        and site.pinned is None
        and (training or not site.eval_uses_hidden())
    )


def _weights(layer) -> tuple[Tensor, Tensor | None]:
    """The weight ``layer`` computes with now and, for mode ``fwd`` networks in training, the
    weight whose output it must give (else None); each network's slice its own projection."""
    w, K = layer.weight, layer.networks
    active = [_acts(s, layer.training) for s in layer.sites]
    if not any(active):
        return w, None
    parts = [layer.part(w, k) for k in range(K)]
    with torch.no_grad():  # each network draws from its own generator, in network order
        projected = [s.project(p) if a else p for s, a, p in zip(layer.sites, active, parts)]
    if not (layer.training and torch.is_grad_enabled()):
        return layer.join(projected), None
    fwd = [a and s.mode == "fwd" for s, a in zip(layer.sites, active)]
    if not any(fwd):
        return _Through.apply(w, lambda _: layer.join(projected)), None
    # mode fwd: the error to the input goes through the hidden weights of those networks
    through = [p if f else q for p, q, f in zip(parts, projected, fwd)]
    return _Through.apply(w, lambda _: layer.join(through)), layer.join(projected)


def _output(f, w: Tensor, value: Tensor | None) -> Tensor:
    """``f(w)``, or mode ``fwd``'s ``f(w) + (f(value) - f(w)).detach()``."""
    y = f(w)
    if value is None:
        return y
    with torch.no_grad():
        yp = f(value)
    return y + (yp - y.detach())


class FusedConv2d(nn.Conv2d):
    """K ``Conv2d`` of one shape as one grouped convolution: weight ``(K*out, in/groups, kh,
    kw)``, network ``k``'s output channels ``[k*out, (k+1)*out)``."""

    def __init__(self, convs: list[nn.Conv2d], sites: list):
        c, K = convs[0], len(convs)
        super().__init__(
            K * c.in_channels,
            K * c.out_channels,
            c.kernel_size,
            stride=c.stride,
            padding=c.padding,
            dilation=c.dilation,
            groups=K * c.groups,
            bias=c.bias is not None,
            padding_mode=c.padding_mode,
            device="meta",
            dtype=c.weight.dtype,
        )
        self.to_empty(device=c.weight.device)
        self.networks, self.sites = K, sites

    def part(self, t: Tensor, k: int) -> Tensor:
        n = t.shape[0] // self.networks
        return t[k * n : (k + 1) * n]

    def join(self, parts: list[Tensor]) -> Tensor:
        return torch.cat(parts)

    def forward(self, x: Tensor) -> Tensor:  # (B, K*C, H, W) -> (B, K*out, H', W')
        return _output(lambda w: self._conv_forward(x, w, self.bias), *_weights(self))


class FusedLinear(nn.Module):
    """K ``Linear`` of one shape as one batched product: weight ``(K, out, in)``, bias ``(K,
    out)``; input ``(..., K*in)``, output ``(..., K*out)``, network ``k``'s at ``[k*out,
    (k+1)*out)``."""

    def __init__(self, linears: list[nn.Linear], sites: list):
        super().__init__()
        m, K = linears[0], len(linears)
        self.in_features, self.out_features, self.networks, self.sites = (
            m.in_features,
            m.out_features,
            K,
            sites,
        )
        like = dict(device=m.weight.device, dtype=m.weight.dtype)
        self.weight = nn.Parameter(torch.empty(K, m.out_features, m.in_features, **like))
        bias = m.bias is not None
        self.bias = nn.Parameter(torch.empty(K, m.out_features, **like)) if bias else None

    def part(self, t: Tensor, k: int) -> Tensor:
        return t[k]

    def join(self, parts: list[Tensor]) -> Tensor:
        return torch.stack(parts)

    def _apply_weight(self, x: Tensor, w: Tensor) -> Tensor:
        lead, K = x.shape[:-1], self.networks
        xs = x.reshape(-1, K, self.in_features).transpose(0, 1)  # (K, N, in)
        wt = w.transpose(1, 2)  # (K, in, out)
        y = torch.bmm(xs, wt) if self.bias is None else torch.baddbmm(self.bias[:, None], xs, wt)
        return y.transpose(0, 1).reshape(*lead, K * self.out_features)  # (..., K*out)

    def forward(self, x: Tensor) -> Tensor:
        return _output(lambda w: self._apply_weight(x, w), *_weights(self))

    def extra_repr(self) -> str:
        return f"networks={self.networks}, in_features={self.in_features}, out={self.out_features}"


def _signature(m: nn.Module) -> tuple:
    """What must agree between the K networks at one place: class, settings, tensor shapes."""
    shapes = tuple(
        (n, None if t is None else tuple(t.shape))
        for n, t in (*m._parameters.items(), *m._buffers.items())
    )
    return _plain_class(m), m.extra_repr(), shapes, tuple(m._modules)


def _site(m: nn.Module):
    """The Site projecting ``m.weight`` (None: not projected); a projected other tensor is
    refused."""
    table = m.__dict__.get("_rw", {})
    other = sorted(set(table) - {"weight"})
    if other:
        raise UserError(f"fuse: {type(m).__name__}.{other[0]} is projected; only weights can be")
    return table.get("weight")


def _fused(ms: list[nn.Module], where: str) -> nn.Module:
    """The fused module for the K modules ``ms`` at place ``where``."""
    sig = _signature(ms[0])
    for k, m in enumerate(ms[1:], 1):
        if _signature(m) != sig:
            raise UserError(
                f"fuse: network {k}'s {where} is {type(m).__name__}({m.extra_repr()}), network "
                f"0's {type(ms[0]).__name__}({ms[0].extra_repr()}): fused networks must have one "
                f"architecture"
            )
    cls = sig[0]
    if cls is nn.Conv2d:
        return FusedConv2d(ms, [_site(m) for m in ms])
    if cls is nn.Linear:
        return FusedLinear(ms, [_site(m) for m in ms])
    if cls in _BATCH_NORMS:
        b = ms[0]
        like = next(iter((*b.parameters(), *b.buffers())))
        fused = cls(
            len(ms) * b.num_features,
            eps=b.eps,
            momentum=b.momentum,
            affine=b.affine,
            track_running_stats=b.track_running_stats,
            device="meta",
            dtype=like.dtype,
        )
        return fused.to_empty(device=like.device)
    if cls is nn.Flatten and ms[0].start_dim == 1:
        return nn.Flatten(1, ms[0].end_dim)
    if cls in _SHARED:
        return copy.deepcopy(ms[0])
    if cls in _CONTAINERS and not ms[0]._parameters and not ms[0]._buffers:
        out = copy.copy(ms[0])
        out.__dict__ = {k: v for k, v in ms[0].__dict__.items() if not k.startswith("_rw")}
        out._parameters, out._buffers = {}, {}
        out._modules = {
            name: None if c is None else _fused([m._modules[name] for m in ms], _at(where, name))
            for name, c in ms[0]._modules.items()
        }
        return out
    raise UserError(
        f"fuse: {where} is a {cls.__name__}, which fusion does not know to act per network; "
        f"fusable: Sequential, Conv2d, Linear, BatchNorm1d/2d, ReLU, pooling, Flatten, Identity, "
        f"resnet18's blocks"
    )


def _at(where: str, name: str) -> str:
    return name if where == "the network" else f"{where}.{name}"


def fuse(models_: list[nn.Module]) -> nn.Module:
    """One network computing the K networks ``models_`` side by side (see the module docstring):
    their weights, batch-norm statistics and projections (each its own). Its input is the K inputs
    concatenated on dimension 1; the plain models are left as they were."""
    if not isinstance(models_, (list, tuple)) or len(models_) < 1:
        raise UserError("fuse: models= must be a list of one or more networks")
    fused = _fused(list(models_), "the network")
    keys = list(models_[0].state_dict())
    if list(fused.state_dict()) != keys:  # (a module class of its own tensors: refused above)
        raise UserError("fuse: the fused network's state keys are not the plain network's")
    kinds = {}
    for prefix, m in fused.named_modules():
        for name, t in (*m._parameters.items(), *m._buffers.items()):
            if t is not None:
                kinds[f"{prefix}.{name}" if prefix else name] = (
                    "stack" if isinstance(m, FusedLinear) else "shared" if t.dim() == 0 else "cat"
                )
    fused.fusion = Fusion(len(models_), kinds)
    for k, m in enumerate(models_):
        load_network(fused, k, m.state_dict())
    fused.train(models_[0].training)
    return fused


def networks(fused: nn.Module) -> int:
    """How many networks ``fused`` holds."""
    return fused.fusion.networks


def _part(t: Tensor, kind: str, K: int, k: int) -> Tensor:
    if kind == "stack":
        return t[k]
    if kind == "shared":
        return t
    n = t.shape[0] // K
    return t[k * n : (k + 1) * n]


def _join(parts: list[Tensor], kind: str) -> Tensor:
    if kind == "stack":
        return torch.stack(parts)
    return parts[0] if kind == "shared" else torch.cat(parts)


def network_state(fused: nn.Module, k: int) -> dict:
    """Network ``k``'s ``state_dict``: the plain model's keys, copies of its slices."""
    f = fused.fusion
    return {
        key: _part(t, f.kinds[key], f.networks, k).detach().clone()
        for key, t in fused.state_dict().items()
    }


@torch.no_grad()
def load_network(fused: nn.Module, k: int, state: dict) -> None:
    """Network ``k``'s slices set from ``state`` (its plain model's ``state_dict``); a shared value
    (a batch count) is set for all."""
    f = fused.fusion
    for key, t in fused.state_dict(keep_vars=True).items():
        _part(t, f.kinds[key], f.networks, k).copy_(state[key])


def split_logits(out: Tensor, K: int) -> Tensor:
    """The fused output ``(B, K*n)`` as ``(B, K, n)``: network ``k``'s at ``[:, k]``."""
    return out.view(*out.shape[:-1], K, out.shape[-1] // K)


def _fused_layers(fused: nn.Module) -> list:
    return [m for m in fused.modules() if isinstance(m, (FusedConv2d, FusedLinear))]


@torch.no_grad()
def clip_(fused: nn.Module) -> None:
    """Each network's projected hidden weights clamped to its own ``[-H, H]`` in place (what
    :func:`robustweights.attachment.clip_` does to each plain model); one clamp for a tensor whose
    K networks share ``H``."""
    tensors, bounds = [], []
    for layer in _fused_layers(fused):
        w = layer.weight
        if not w.requires_grad:
            continue
        hs = [None if s is None else s.H for s in layer.sites]
        if None not in hs and len(set(hs)) == 1:
            tensors.append(w)
            bounds.append(hs[0])
            continue
        for k, h in enumerate(hs):
            if h is not None:
                tensors.append(layer.part(w, k))
                bounds.append(h)
    if tensors:
        torch._foreach_clamp_min_(tensors, [-h for h in bounds])
        torch._foreach_clamp_max_(tensors, bounds)


def _param_kinds(fused: nn.Module) -> list[tuple[Tensor, str]]:
    """Each parameter (optimizer order: ``parameters()``) with its kind."""
    kinds = fused.fusion.kinds
    return [(p, kinds[n]) for n, p in fused.named_parameters()]


def split_optimizer_state(fused: nn.Module, state: dict, k: int) -> dict:
    """Network ``k``'s share of the fused optimizer's ``state_dict`` (``state``): what an optimizer
    of the plain model (same settings, its ``parameters()``) loads. A value of a parameter's shape
    (Adam's moments, a momentum) is sliced; any other (Adam's step) is network 0's for all."""
    K, params = fused.fusion.networks, _param_kinds(fused)
    out = {}
    for i, s in state["state"].items():
        p, kind = params[i]
        out[i] = {
            key: (
                _part(v, kind, K, k).clone()
                if isinstance(v, Tensor) and v.shape == p.shape
                else v.clone()
                if isinstance(v, Tensor)
                else v
            )
            for key, v in s.items()
        }
    return {"state": out, "param_groups": copy.deepcopy(state["param_groups"])}


def merged_optimizer_state(fused: nn.Module, states: list[dict], template: dict) -> dict | None:
    """The fused optimizer's ``state_dict`` from the K plain optimizers' ``states`` (None when none
    has stepped yet); its settings are ``template``'s (the fused optimizer's own)."""
    if not any(s["state"] for s in states):
        return None
    K, params = fused.fusion.networks, _param_kinds(fused)
    merged = {}
    for i, s0 in states[0]["state"].items():
        p, kind = params[i]
        shape = _part(p, kind, K, 0).shape
        merged[i] = {
            key: (
                _join([s["state"][i][key] for s in states], kind)
                if isinstance(v, Tensor) and v.shape == shape and kind != "shared"
                else v
            )
            for key, v in s0.items()
        }
    return {"state": merged, "param_groups": copy.deepcopy(template["param_groups"])}
