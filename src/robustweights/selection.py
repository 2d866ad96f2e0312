"""Which parameters are weights: selection by name, pattern, module class, tied holders; options.

The vocabulary of :func:`robustweights.projected.attach`, of sweeps and of
``--include``/``--exclude``/``--type``/``--exclude-type``: by default every
floating-point parameter with two or more dimensions; a pattern (shell
style) matches a parameter's name or its module's name, under any name a tied
parameter has; a type is a module class (its own, before ``attach``). A pattern
or type that matches nothing is an error, never silence.
"""

from __future__ import annotations

import fnmatch
from dataclasses import field

from torch import nn

from .errors import UserError

__all__ = [
    "holders_of",
    "own_class",
    "name_matches",
    "matches_any",
    "aliases",
    "select",
    "shorten",
    "selection_field",
]


def holders_of(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """Every (full name, module, attribute) holding each parameter, by ``id``, in module order."""
    out: dict[int, list] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        for attr, p in m._parameters.items():
            if p is not None:
                out.setdefault(id(p), []).append((f"{mname}.{attr}" if mname else attr, m, attr))
    return out


def own_class(m: nn.Module) -> type:
    """The module's class before :func:`attach` (its class now, for a module not attached)."""
    return getattr(type(m), "_rw_class", type(m))


def aliases(model: nn.Module) -> dict[str, list[str]]:
    """Every name of each parameter, by its ``named_parameters`` name (a tied one has several)."""
    return {hold[0][0]: [n for n, _, _ in hold] for hold in holders_of(model).values()}


def name_matches(pattern: str, name: str, module_name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(module_name, pattern)


def matches_any(pattern: str, names) -> bool:
    """Whether ``pattern`` matches one of ``names`` (full parameter names) or its module's name."""
    return any(name_matches(pattern, n, n.rpartition(".")[0]) for n in names)


def select(
    model: nn.Module,
    *,
    include=("*",),
    exclude=(),
    types=(),
    exclude_types=(),
    float_first: bool = False,
    float_last: bool = False,
):
    """Which parameters a projection or distortion covers: ``(chosen, left_out)``.

    ``chosen`` is a list of ``(name, param)`` in ``named_parameters`` order;
    ``left_out`` a list of ``{"name", "shape", "count", "reason"}`` for every
    other parameter. See the module docstring for the vocabulary; a pattern or
    type that matches nothing is an error, never silence.
    """
    include, exclude = tuple(include or ("*",)), tuple(exclude or ())
    types, exclude_types = tuple(types or ()), tuple(exclude_types or ())
    holders = holders_of(model)
    params = list(model.named_parameters())
    candidates, left_out = [], []

    def leave(name, p, reason):
        left_out.append(
            {"name": name, "shape": list(p.shape), "count": p.numel(), "reason": reason}
        )

    for name, p in params:
        why = _why_left_out(name, p, holders[id(p)], include, exclude, types, exclude_types)
        if why is None:
            candidates.append((name, p))
        else:
            leave(name, p, why)
    names = [n for n, _ in params]
    _check_all_match(model, holders, names, include + exclude, types + exclude_types)
    chosen = list(candidates)
    if float_first and chosen:
        leave(chosen[0][0], chosen[0][1], "first weight kept float (float_first)")
        chosen = chosen[1:]
    if float_last and chosen:
        leave(chosen[-1][0], chosen[-1][1], "last weight kept float (float_last)")
        chosen = chosen[:-1]
    order = {n: i for i, n in enumerate(names)}
    left_out.sort(key=lambda d: order[d["name"]])
    return chosen, left_out


def _why_left_out(name, p, hold, include, exclude, types, exclude_types) -> str | None:
    """Why parameter ``name`` (held at ``hold``) is left out, or None when it is chosen.

    A tied parameter answers to each of its holders: their names (head.weight as well as
    embed.weight) and their classes.
    """
    classes = [own_class(m).__name__ for _, m, _ in hold]
    names = [n for n, _, _ in hold]

    def matches(pat):
        return matches_any(pat, names)

    if p.is_complex():
        return "complex"
    if not p.is_floating_point():
        return "not floating point"
    if p.dim() < 2 or name.rsplit(".", 1)[-1].startswith("bias"):  # (MHA's bias_k is (1, 1, E))
        return "bias or normalization parameter (fewer than 2 dimensions, or named bias)"
    if not any(matches(pat) for pat in include):
        return f"not matched by include {', '.join(include)}"
    if any(matches(pat) for pat in exclude):
        return f"excluded ({next(pat for pat in exclude if matches(pat))})"
    if types and not any(c in types for c in classes):
        held = " and ".join(dict.fromkeys(classes))
        return f"held by {held}, not one of the types {', '.join(types)}"
    if any(c in exclude_types for c in classes):
        return f"held by {next(c for c in classes if c in exclude_types)} (excluded type)"
    return None


def _check_all_match(model: nn.Module, holders: dict, names: list, patterns, types) -> None:
    """A pattern or type that matches nothing is an error, never silence."""
    every = [n for hold in holders.values() for n, _, _ in hold]
    for pat in patterns:
        if pat != "*" and not matches_any(pat, every):
            raise UserError(f"pattern {pat!r} matches no parameter; parameters: {shorten(names)}")
    present = {own_class(m).__name__ for m in model.modules()}
    for t in types:
        if t not in present:
            raise UserError(
                f"module type {t!r} is not in this model; types: {shorten(sorted(present))}"
            )


def shorten(names, k: int = 12) -> str:
    names = list(names)
    return ", ".join(names[:k]) + (f", ... ({len(names)} in all)" if len(names) > k else "")


def selection_field(which: str, verb: str, left: str, default_help: str = ""):
    """A config field of the selection vocabulary, with its command-line help.

    ``which`` is ``include``, ``exclude``, ``types`` or ``exclude_types``; ``verb`` is what happens
    to chosen weights ("project"), ``left`` to the others.
    """
    text = {
        "include": f"{verb} only weights whose name (or module name) matches this shell pattern, "
        "repeatable" + (f" (default: {default_help})" if default_help else ""),
        "exclude": f"leave weights whose name (or module name) matches this pattern {left}, "
        "repeatable",
        "types": f"{verb} only weights held by modules of this class, repeatable (e.g. Linear)",
        "exclude_types": f"leave weights held by modules of this class {left}, repeatable",
    }[which]
    flag = {"types": "--type", "exclude_types": "--exclude-type"}.get(which)
    return field(default_factory=list, metadata={"help": text, **({"flag": flag} if flag else {})})
