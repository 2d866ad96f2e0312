"""Helpers shared by the test files, and the device the device tests run on.

pytest                      # everything on the CPU, also on a machine with a GPU
pytest --device cuda        # tests/test_device.py on the GPU, and "auto" picks it elsewhere
RW_TEST_DEVICE=cuda pytest  # the same
# only what makes sense on a GPU (benchmarks/gpu_tests.sh):
pytest tests/test_device.py --device cuda
"""

import os
from pathlib import Path

import pytest
import torch

from robustweights.cli import main
from robustweights.data import default_data_dir


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default=os.environ.get("RW_TEST_DEVICE", "cpu"),
        help="device for tests/test_device.py: cpu (default), cuda or cuda:N (also RW_TEST_DEVICE)",
    )


def pytest_configure(config):
    """Without --device cuda the suite is the CPU suite CI runs, on any machine: the GPU is hidden
    (before anything initialises CUDA), so that "auto" means the CPU here as it does on CI."""
    if not config.getoption("--device").startswith("cuda"):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The device under test: one line and a failure (not a skip) when it was asked for and is
    missing."""
    name = request.config.getoption("--device")
    d = torch.device(name)
    if d.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(
            f"--device {name} asked for, but torch {torch.__version__} sees no CUDA GPU",
            pytrace=False,
        )
    return d


def run_main(capsys, *argv):
    """Run the command line in-process: (exit status, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own mistakes
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err):
    """The single line a user mistake prints (no usage text, no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def need(path: Path, what: str) -> None:
    """Skip when real data is absent, except on CI, where absence is a failure."""
    if not path.exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{what} missing at {path} (CI must have it)")
        pytest.skip(f"{what} not available at {path}")


def need_fashion_mnist() -> None:
    """For the tests that train the ``tiny`` reproduce preset (Fashion-MNIST from Debian's package):
    a GPU machine, for one, has no datasets."""
    found = default_data_dir("fashion-mnist")
    need(
        Path(found or "/usr/share/datasets/fashion-mnist"),
        "Fashion-MNIST (Debian dataset-fashion-mnist)",
    )
