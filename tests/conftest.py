"""Shared test helpers: the repo root, the environment of CPU subprocesses
with fake devices, the real Fashion-MNIST (from Debian's package) in TFDS
and a mock CIFAR-10.

Test modules import the plain helpers with `from tests.conftest import ...`
(tests/ is a package, so this is the module pytest loads).
"""

import os
import pathlib
import sys
import tempfile

# pylint: disable=g-import-not-at-top,wrong-import-position
from dssn_jax.runtime import xla_options

# The tests run in-process what the entry points run, under the same XLA
# options (results files record them, and a subprocess CLI may resume one).
xla_options.apply_defaults()

import jax
import pytest

from dssn_jax.data import fashion_mnist

# Many tests compile the same programs (and subprocesses inherit the env var):
# a persistent compilation cache keeps the suite fast.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), "dssn_jax_jit_cache"),
)
jax.config.update(
    "jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"]
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

# The repository's root: subprocesses run there (`python -m experiments.X`).
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def cpu_subprocess_env(devices: int | None = None, **extra: str) -> dict:
  """The environment for a subprocess of a test: this one's (with the XLA
  options in force, the compilation cache and the repo on PYTHONPATH), on
  the CPU, with `devices` fake devices when given, plus `extra`."""
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p
  )
  if devices is not None:
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={devices}"
    ).strip()
  env.update(extra)
  return env


def run_python(args, *, env=None, timeout=600, **kwargs):
  """Runs `python args...` from the repo root with captured text output."""
  import subprocess  # pylint: disable=g-import-not-at-top

  return subprocess.run(
      [sys.executable, *args],
      cwd=REPO_ROOT,
      env=cpu_subprocess_env() if env is None else env,
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
      **kwargs,
  )


@pytest.fixture(scope="session")
def fashion_mnist_data_dir(tmp_path_factory):
  """A TFDS data dir with fashion_mnist built from the Debian files, once."""
  if not os.path.isdir(fashion_mnist.FASHION_MNIST_MANUAL_DIR):
    pytest.fail(
        "Fashion-MNIST is missing: run `apt-get install "
        "dataset-fashion-mnist` (setup.sh does)."
    )
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  fashion_mnist.prepare_fashion_mnist(data_dir)
  return data_dir


MOCK_CIFAR10_EXAMPLES = 40


def _mock_cifar10_as_dataset(
    self, split, decoders=None, read_config=None, shuffle_files=False
):
  """Random cifar10 examples whose `id` is '<split>_<index>' like the real
  builder's (tfds.testing.mock_data's own ids are random strings), stored in
  a shuffled order as TFDS stores them."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  del self, read_config, shuffle_files
  prefix = "train" if "train" in str(split) else "test"
  rng = np.random.RandomState(0 if prefix == "train" else 1)
  order = rng.permutation(MOCK_CIFAR10_EXAMPLES)
  images = rng.randint(0, 256, (MOCK_CIFAR10_EXAMPLES, 32, 32, 3), np.uint8)
  ds = tf.data.Dataset.from_tensor_slices(
      {
          "id": [f"{prefix}_{i:05d}" for i in order],
          "image": [tf.io.encode_png(images[i]).numpy() for i in order],
          "label": (order % 10).astype(np.int64),
      }
  )
  if not (decoders and "image" in decoders):
    ds = ds.map(lambda ex: {**ex, "image": tf.io.decode_png(ex["image"], 3)})
  return ds


@pytest.fixture
def mock_cifar10():
  """tfds.testing.mock_data for cifar10 with real-looking ids."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  with tfds.testing.mock_data(
      num_examples=MOCK_CIFAR10_EXAMPLES, as_dataset_fn=_mock_cifar10_as_dataset
  ):
    yield


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, fashion_mnist_data_dir):
  """One trained Fashion-MNIST smoke run, certified with DSSN and uniform
  noise (configs/fashion_mnist.py:smoke; seconds). Tests that change it
  work on a copy: `shutil.copytree(smoke_run.workdir, ...)`."""
  import types  # pylint: disable=g-import-not-at-top

  from configs import fashion_mnist  # pylint: disable=g-import-not-at-top
  from dssn_jax.runs import certify_workdir  # pylint: disable=g-import-not-at-top
  from dssn_jax.training import classifier  # pylint: disable=g-import-not-at-top

  config = fashion_mnist.get_config("smoke")
  config.data_dir = fashion_mnist_data_dir
  workdir = str(tmp_path_factory.mktemp("smoke_run") / "run")
  classifier.train_and_evaluate(config, workdir)
  for method in ("dssn", "uniform"):
    config.certify.method = method
    certify_workdir.certify_workdir(config, workdir)
  config.certify.method = "dssn"
  return types.SimpleNamespace(
      workdir=workdir, config=config, data_dir=fashion_mnist_data_dir
  )
