"""A user's own code named ``package.module:function``: imported only for a name the user typed.

Models (``--model``, ``--model-factory``), measures (``--measure``) and data (``--data``) may be
a user's function. :func:`import_named` imports it, with one line for each way the name can be
wrong; the current folder is importable as ``python -m`` has it (the command line puts it on
``sys.path``). A name read from a run folder or checkpoint is never imported unless the user
named it again (:func:`robustweights.models.check_factory_allowed`): a stranger's file must not
choose what code runs.
"""

from __future__ import annotations

import importlib

from .errors import UserError, one_line


def is_named(spec) -> bool:
    """Whether ``spec`` has the form ``package.module:function`` (and so names a user's code)."""
    return isinstance(spec, str) and ":" in spec


def import_named(spec: str, what: str, must_call: bool = True):
    """The attribute ``spec`` (``package.module:function``) names; ``what`` says what it is for
    (``model 'x:y'``, ``measure 'x:y'``) in the messages; ``must_call=False`` also takes an
    object that is not callable (a ready :class:`robustweights.measures.Measure`)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"{what} must have the form package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:  # other errors raised by the module are bugs: keep their traceback
        raise UserError(
            f"cannot import module {module_name!r} for {what} ({one_line(e)}); "
            f"check the name and that it is in the current folder or on PYTHONPATH"
        ) from None
    found = getattr(module, attr, None)
    if found is None or (must_call and not callable(found)):
        kind = "callable " if must_call else ""
        raise UserError(f"module {module_name!r} has no {kind}{attr!r} for {what}")
    return found
