"""Data: MNIST (verified IDX files), ROTMNIST (official or generated) and the robustness scenarios.

* :mod:`~eqpdenet.data.mnist`: the IDX reader, the data directory, a verified download.
* :mod:`~eqpdenet.data.rotmnist`: ROTMNIST from the official ``.amat`` files or generated from
  MNIST, cached.
* :mod:`~eqpdenet.data.scenarios`: seeded affine perturbations of test images (``iso``, ``sca``,
  ...), in a registry.
* :mod:`~eqpdenet.data.augment`: random similarities of training batches (``train.augment``).
"""

from .augment import AffineAugmentation
from .mnist import MNIST, load_mnist, read_idx, resolve_cache_dir, resolve_data_dir
from .rotmnist import RotMNIST, load_rotmnist
from .scenarios import SCENARIOS, apply_scenario, available_scenarios, register_scenario

__all__ = [
    "MNIST",
    "AffineAugmentation",
    "SCENARIOS",
    "RotMNIST",
    "apply_scenario",
    "available_scenarios",
    "load_mnist",
    "load_rotmnist",
    "read_idx",
    "register_scenario",
    "resolve_cache_dir",
    "resolve_data_dir",
]
