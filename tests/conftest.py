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


class MockRecords(list):
  """A list of examples with the data sources' batched read."""

  def __getitems__(self, keys):
    return [self[k] for k in keys]


def _mock_cifar10_as_data_source(self, split, decoders=None, **kwargs):
  """Random cifar10 examples whose `id` is '<split>_<index>' like the real
  builder's (tfds.testing.mock_data's own ids are random strings), stored in
  a shuffled order as TFDS stores them; images PNG-encoded (the pipelines
  read them with the image decoding skipped)."""
  import io  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  del self, decoders, kwargs
  prefix = "train" if "train" in str(split) else "test"
  rng = np.random.RandomState(0 if prefix == "train" else 1)
  order = rng.permutation(MOCK_CIFAR10_EXAMPLES)
  images = rng.randint(0, 256, (MOCK_CIFAR10_EXAMPLES, 32, 32, 3), np.uint8)

  def png(image):
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()

  return MockRecords(
      {
          "id": f"{prefix}_{i:05d}".encode(),
          "image": png(images[i]),
          "label": np.int64(i % 10),
      }
      for i in order
  )


@pytest.fixture
def mock_cifar10():
  """tfds.testing.mock_data for cifar10 with real-looking ids."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  with tfds.testing.mock_data(
      num_examples=MOCK_CIFAR10_EXAMPLES,
      as_data_source_fn=_mock_cifar10_as_data_source,
  ):
    yield


MOCK_IMAGENET_EXAMPLES = 8


def _mock_imagenet_as_data_source(self, split, decoders=None, **kwargs):
  """Random JPEGs of random sizes (40-300 pixels a side), as encoded
  records in a list, which pickles into Grain's worker processes as a real
  data source does (tfds.testing.mock_data's own source does not)."""
  import io  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  del self, decoders, kwargs
  rng = np.random.default_rng(0 if "train" in str(split) else 1)
  records = MockRecords()
  for i in range(MOCK_IMAGENET_EXAMPLES):
    shape = (int(rng.integers(40, 300)), int(rng.integers(40, 300)), 3)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(out, "JPEG")
    records.append(
        {"image": out.getvalue(), "label": np.int64(i * 100), "file_name": b""}
    )
  return records


@pytest.fixture
def mock_imagenet():
  """tfds.testing.mock_data for imagenet2012: random JPEGs."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  with tfds.testing.mock_data(
      num_examples=MOCK_IMAGENET_EXAMPLES,
      as_data_source_fn=_mock_imagenet_as_data_source,
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
