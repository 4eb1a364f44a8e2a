"""configs/ at the top of the checkout holds the real configs; the package carries copies."""

import subprocess
import sys
from pathlib import Path

import pytest

from distnn.config import bundled_config_path, load_config

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("quickstart", "mnist", "fashion_mnist", "cifar10")


def test_top_level_configs_are_files_not_links():
    for name in NAMES:
        path = ROOT / "configs" / f"{name}.yaml"
        assert path.is_file() and not path.is_symlink(), path


@pytest.mark.parametrize("name", NAMES)
def test_package_copy_matches_the_source(name):
    source = ROOT / "configs" / f"{name}.yaml"
    copy = bundled_config_path(name)
    assert copy.read_bytes() == source.read_bytes(), (
        f"{copy} differs from {source}; configs/ is the source: cp configs/*.yaml distnn/configs/")


def test_no_package_config_without_a_source():
    shipped = {p.name for p in bundled_config_path("x").parent.glob("*.yaml")}
    assert shipped == {f"{n}.yaml" for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_top_level_config_loads_by_path(name):
    cfg = load_config(str(ROOT / "configs" / f"{name}.yaml"))
    assert cfg.name == name and cfg.model


def test_train_from_the_checkout_by_relative_path(tmp_path):
    """What a new user types first after reading the design: distnn train configs/X.yaml."""
    run = subprocess.run(
        [sys.executable, "-m", "distnn.cli", "train", "configs/quickstart.yaml",
         "--run-dir", str(tmp_path / "run"), "--set", "train.max_steps=2",
         "--set", "train.epochs=1", "--set", "data.prefetch=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "test accuracy" in run.stdout
    assert (tmp_path / "run" / "checkpoints" / "last.h5").is_file()
