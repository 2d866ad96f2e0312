"""The paper, Merolla et al. 2016: its claims judged on measured sweeps, its experiments, a demo.

- :mod:`.claims`: the five claims and the rule that judges each one;
- :mod:`.statements`: the claims in words (each one's statement and figure, each rule's text);
- :mod:`.presets`: the rows, experiments and typed scale presets of a reproduce run, with ``--set``;
- :mod:`.experiments`: ``robustweights reproduce``, the experiments end to end (the out folder,
  training, sweeps, claims; resumable runs);
- :mod:`.judging`: ``robustweights judge``, the claims on rows recorded in several reproduce folders
  (GPU windows), read back without their checkpoints;
- :mod:`.demo`: ``robustweights demo``, the paper's story on data shipped inside the package.

These sit on top of the core (training, sweeps, reports); nothing in the core imports them.
"""

from .claims import judge, read_claims
from .experiments import EXPERIMENTS, PRESETS, Preset, reproduce, resolve_preset

__all__ = [
    "judge",
    "read_claims",
    "reproduce",
    "resolve_preset",
    "EXPERIMENTS",
    "PRESETS",
    "Preset",
]
