"""End-to-end tests of training, checkpoints and their smoothing metadata."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10 as cifar10_config
from configs import fashion_mnist as fashion_mnist_config
from configs import imagenet as imagenet_config
import dssn_jax
from dssn_jax.data import fashion_mnist
from dssn_jax.training import checkpoints
from dssn_jax.training import classifier as classifier_training
from dssn_jax.training import metrics

# Trains models or starts processes: the slow tier (`-m 'not slow'`).
pytestmark = pytest.mark.slow


def smoke_config(module, data_dir=None, **overrides):
  config = module.get_config("smoke")
  config.data_dir = data_dir
  config.update(overrides)
  return config


def params_of(state):
  return jax.tree.map(
      np.asarray, {"params": state.params, "batch_stats": state.batch_stats}
  )


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


# ---------------------------------------------------------------------------
# Stability loss.
# ---------------------------------------------------------------------------


def test_stability_loss_hand_computed():
  logits_1 = jnp.array([[0.0, math.log(3.0)], [math.log(2.0), 0.0]])
  logits_2 = jnp.array([[0.0, 0.0], [0.0, 0.0]])
  labels = jnp.array([1, 1])
  # p1 = [[1/4, 3/4], [2/3, 1/3]], p2 = uniform.
  ce = (-math.log(3 / 4) - math.log(1 / 3)) / 2
  kl_1 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
  kl_2 = (2 / 3) * math.log((2 / 3) / 0.5) + (1 / 3) * math.log((1 / 3) / 0.5)
  loss, (got_ce, got_kl) = classifier_training.stability_loss(
      logits_1, logits_2, labels, 6.0
  )
  assert float(got_ce) == pytest.approx(ce, rel=1e-6)
  assert float(got_kl) == pytest.approx((kl_1 + kl_2) / 2, rel=1e-6)
  assert float(loss) == pytest.approx(ce + 6.0 * (kl_1 + kl_2) / 2, rel=1e-6)
  same, (_, kl) = classifier_training.stability_loss(
      logits_1, logits_1, labels, 6.0
  )
  assert float(kl) == pytest.approx(0.0, abs=1e-7)
  assert float(same) == pytest.approx(ce, rel=1e-6)


# ---------------------------------------------------------------------------
# Smoke runs on every config.
# ---------------------------------------------------------------------------


def test_fashion_mnist_smoke_writes_restorable_checkpoint(
    tmp_path, fashion_mnist_data_dir, monkeypatch
):
  seen_offsets = []
  original = classifier_training.smoothing.random_noise

  def recording_noise(kind, key, x, spec, v=None):
    seen_offsets.append(np.asarray(v))
    return original(kind, key, x, spec, v)

  monkeypatch.setattr(
      classifier_training.smoothing, "random_noise", recording_noise
  )
  config = smoke_config(
      fashion_mnist_config, fashion_mnist_data_dir, stability=True
  )
  workdir = str(tmp_path / "run")
  state = classifier_training.train_and_evaluate(config, workdir)
  assert int(state.step) == config.num_epochs * config.steps_per_epoch

  classifier = checkpoints.load_classifier(workdir)
  meta = classifier.metadata
  assert meta["noise"] == "dssn" and meta["sigma"] == config.sigma
  assert meta["levels"] == dssn_jax.SmoothingSpec(config.sigma).levels
  assert meta["input_shape"] == [28, 28, 1] and meta["num_classes"] == 10
  assert meta["stability"] is True and meta["stability_gamma"] == 6.0
  assert classifier.step == int(state.step)
  assert_trees_equal(classifier.variables, params_of(state))
  # The training noise used exactly the offsets the checkpoint certifies with.
  assert seen_offsets
  for offsets in seen_offsets:
    np.testing.assert_array_equal(offsets, classifier.offsets)
  assert meta["offsets_sha256"] == dssn_jax.offsets_fingerprint(
      classifier.offsets
  )
  # The restored classifier certifies.
  x = jnp.zeros((2, 28, 28, 1))
  counts = dssn_jax.dssn_counts(
      classifier.apply_fn,
      x,
      classifier.offsets,
      classifier.spec,
      params=classifier.variables,
  )
  np.testing.assert_array_equal(counts.sum(1), classifier.spec.levels)


def check_mock_run(workdir, name, shape, noise):
  meta = checkpoints.Checkpointer(workdir, create=False).metadata()
  assert meta["dataset"] == name and meta["input_shape"] == list(shape)
  assert meta["noise"] == noise
  classifier = checkpoints.load_classifier(workdir)
  assert classifier.offsets.shape == shape


def test_cifar10_smoke_on_mock_data(tmp_path, mock_cifar10):
  del mock_cifar10
  config = smoke_config(cifar10_config, noise="ssn")
  classifier_training.train_and_evaluate(config, str(tmp_path / "run"))
  check_mock_run(str(tmp_path / "run"), "cifar10", (32, 32, 3), "ssn")


def test_imagenet_smoke_on_mock_data(tmp_path, mock_imagenet):
  del mock_imagenet
  config = smoke_config(imagenet_config)
  classifier_training.train_and_evaluate(config, str(tmp_path / "run"))
  check_mock_run(str(tmp_path / "run"), "imagenet2012", (224, 224, 3), "dssn")


# ---------------------------------------------------------------------------
# Resume.
# ---------------------------------------------------------------------------


class KilledError(Exception):
  pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fashion_mnist_data_dir):
  """The final parameters of an uninterrupted Fashion-MNIST smoke run."""
  config = smoke_config(fashion_mnist_config, fashion_mnist_data_dir)
  workdir = str(tmp_path_factory.mktemp("straight"))
  return params_of(classifier_training.train_and_evaluate(config, workdir))


def test_resume_after_kill_matches_uninterrupted_run(
    tmp_path, fashion_mnist_data_dir, monkeypatch, uninterrupted
):
  config = smoke_config(fashion_mnist_config, fashion_mnist_data_dir)
  original_save = checkpoints.Checkpointer.save

  def save_then_die(self, step, state, metadata, **kwargs):
    original_save(self, step, state, metadata, **kwargs)
    raise KilledError(f"killed after saving step {step}")

  workdir = str(tmp_path / "killed")
  monkeypatch.setattr(checkpoints.Checkpointer, "save", save_then_die)
  with pytest.raises(KilledError):
    classifier_training.train_and_evaluate(config, workdir)
  assert checkpoints.Checkpointer(workdir).latest_step() == (
      config.steps_per_epoch
  )
  monkeypatch.setattr(checkpoints.Checkpointer, "save", original_save)
  resumed = params_of(classifier_training.train_and_evaluate(config, workdir))
  assert_trees_equal(resumed, uninterrupted)
  steps = [
      int(line.split('"step": ')[1].split(",")[0])
      for line in open(f"{workdir}/{metrics.METRICS_FILE}")
  ]
  assert steps == sorted(set(steps)), "no duplicated metric rows"


def test_resume_mid_epoch_matches_uninterrupted_run(
    tmp_path, fashion_mnist_data_dir, monkeypatch, uninterrupted
):
  # Epochs of 3 steps, a checkpoint 2 steps into each: killed right after
  # the one at step 2, the run resumes there (with its iterators' states),
  # not at step 0, and ends where the run without mid-epoch saves ends.
  config = smoke_config(
      fashion_mnist_config, fashion_mnist_data_dir, checkpoint_every_steps=2
  )
  assert config.steps_per_epoch == 3
  original_save = checkpoints.Checkpointer.save
  saved = []

  def save_then_die(self, step, state, metadata, **kwargs):
    original_save(self, step, state, metadata, **kwargs)
    raise KilledError(f"killed after saving step {step}")

  workdir = str(tmp_path / "killed")
  monkeypatch.setattr(checkpoints.Checkpointer, "save", save_then_die)
  with pytest.raises(KilledError, match="step 2$"):
    classifier_training.train_and_evaluate(config, workdir)

  def save_and_record(self, step, state, metadata, **kwargs):
    saved.append(step)
    original_save(self, step, state, metadata, **kwargs)

  monkeypatch.setattr(checkpoints.Checkpointer, "save", save_and_record)
  original_write = metrics.write_metrics
  rows = []

  def write_and_record(workdir, writer, step, summary):
    rows.append(step)
    original_write(workdir, writer, step, summary)

  monkeypatch.setattr(metrics, "write_metrics", write_and_record)
  resumed = params_of(classifier_training.train_and_evaluate(config, workdir))
  assert rows[0] == 3, "the resumed run steps on from step 2, no replay"
  assert saved == [3, 5, 6]
  assert_trees_equal(resumed, uninterrupted)


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("dataset", "mnist", "(?i)unknown dataset"),
        ("model", "vit", "Unknown model"),
        ("noise", "gaussian", "Unknown noise kind"),
        ("q", 127, "8-bit"),
        ("checkpoint_every_steps", -1, "checkpoint_every_steps must be an"),
        ("decode_workers", -2, "decode_workers must be -1"),
    ],
)
def test_bad_config(tmp_path, field, value, message):
  config = smoke_config(fashion_mnist_config, str(tmp_path / "tfds"))
  config[field] = value
  with pytest.raises(ValueError, match=message):
    classifier_training.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.parametrize(
    "field, value", [("sigma", 0.25), ("offsets_seed", 1), ("noise", "uniform")]
)
def test_workdir_with_other_smoothing_is_refused(
    tmp_path, fashion_mnist_data_dir, field, value
):
  config = smoke_config(
      fashion_mnist_config, fashion_mnist_data_dir, num_epochs=1
  )
  workdir = str(tmp_path / "run")
  classifier_training.train_and_evaluate(config, workdir)
  config[field] = value
  with pytest.raises(ValueError, match=f"disagrees.*{field}"):
    classifier_training.train_and_evaluate(config, workdir)


def test_offsets_fingerprint_mismatch_is_refused(
    tmp_path, fashion_mnist_data_dir
):
  config = smoke_config(
      fashion_mnist_config, fashion_mnist_data_dir, num_epochs=1
  )
  workdir = str(tmp_path / "run")
  classifier_training.train_and_evaluate(config, workdir)
  checkpointer = checkpoints.Checkpointer(workdir)
  meta = checkpointer.metadata()
  meta["offsets_sha256"] = "0" * 64  # As if another JAX drew other offsets.
  checkpointer.save(
      checkpointer.latest_step() + 1, checkpointer.restore(), meta
  )
  with pytest.raises(ValueError, match="sha256"):
    checkpoints.load_classifier(workdir)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="Train first"):
    checkpoints.load_classifier(str(tmp_path / "nothing"))


def test_fashion_mnist_without_debian_files(tmp_path, monkeypatch):
  monkeypatch.setattr(
      fashion_mnist,
      "prepare_fashion_mnist",
      functools.partial(
          fashion_mnist.prepare_fashion_mnist,
          manual_dir=str(tmp_path / "empty"),
      ),
  )
  (tmp_path / "tfds").mkdir()  # An existing, empty TFDS data dir.
  config = smoke_config(fashion_mnist_config, str(tmp_path / "tfds"))
  with pytest.raises(FileNotFoundError, match="apt-get install"):
    classifier_training.train_and_evaluate(config, str(tmp_path / "run"))
