"""``robustweights demo``: the main job on data shipped inside the package.

Trains the small CNN twice on a Fashion-MNIST subset that ships with the
package (no download, no dataset to install): once with float weights
(``identity``) and once with binarized weights (``sign``, ``fwd+bwd``). Then
tests both networks with their hidden float weights and with binarized weights,
and prints the comparison. Binarized means the sign-trained network's own
projection ``H sign(W)`` with its clip bound ``H = 1``, and for the float
network the test-time distortion ``sign`` with method.md's default scale
``max|W|`` per tensor. (Both networks end every layer with batch norm, whose
stored statistics are not scale-free: binarizing the sign-trained network at
any other scale than the one it was trained at would test a scale mismatch,
not binarization.) Under a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from . import projected
from .errors import UserError
from .training import TrainConfig, evaluate, load_config_data, train, write_text

MARKER = "demo.json"
EPOCHS = 8  # enough for both networks to settle on 5000 images; about a minute each on 2 cores


def _prepare(out: Path) -> None:
    """Use ``out`` if it is new or holds an earlier demo (which is replaced); never touch anything else."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise UserError(f"{out} exists and is not a demo folder; pass --out with a new folder")
        for name in ("float", "sign", MARKER):
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def run_demo(out: str = "runs/demo", epochs: int | None = None, progress: bool = True) -> dict:
    """Train, test and compare; returns the numbers it printed."""
    out_path = Path(out)
    _prepare(out_path)
    base = dict(model="cnn", dataset="demo", epochs=epochs or EPOCHS, batch_size=50, lr=2e-3,
                schedule="cosine", seed=0)
    rows = {}
    t0 = time.perf_counter()
    data = None
    for name, projection in (("float", "identity"), ("sign", "sign")):
        config = TrainConfig(**base, projection=projection, out=str(out_path / name))
        if progress:
            print(f"training the {name} network ({projection}, {config.epochs} epochs) ...", flush=True)
        result = train(config, progress=progress)
        data = data or load_config_data(config)
        model = result.model
        hidden = evaluate(model, config, weights="hidden", data=data)
        binarize = "sign:scale=clip" if projection == "sign" else "sign"
        with projected.distort(model, binarize):
            binary = evaluate(model, config, weights="hidden", data=data)
        rows[name] = {"projection": projection, "hidden_error": hidden["error"], "binary_error": binary["error"],
                      "binarized_with": binarize}
    seconds = time.perf_counter() - t0
    summary = {"dataset": data.description, "model": "cnn", "epochs": base["epochs"], "seconds": seconds,
               "networks": rows}
    write_text(out_path / MARKER, json.dumps(summary, indent=2) + "\n")

    f, s = rows["float"], rows["sign"]
    print(f"\nrobustweights demo: small CNN on the {data.description}, {base['epochs']} epochs each, "
          f"{seconds:.0f} s\n")
    print(f"{'network':<26}{'test error, hidden float weights':>34}{'test error, binarized weights':>31}")
    for name, r in rows.items():
        label = f"{name}-trained ({r['projection']})"
        print(f"{label:<26}{r['hidden_error']:>34.2%}{r['binary_error']:>22.2%} ({r['binarized_with']})")
    print(f"\nBinarizing the float-trained network's weights at test time takes its error from "
          f"{f['hidden_error']:.2%} to {f['binary_error']:.2%}; the sign-trained network runs binarized at "
          f"{s['binary_error']:.2%}, {(s['binary_error'] - f['hidden_error']) * 100:+.1f} points from the float "
          f"network with float weights.\n(The sign-trained network's hidden weights alone are a poor float "
          f"network: its batch-norm statistics were gathered with weights of magnitude 1.)")
    print(f"runs and checkpoints: {out_path}/float, {out_path}/sign")
    return summary
