"""Tests of denoised smoothing: DnCNN, denoiser training, certifying f o D."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fashion_mnist as fashion_mnist_config
import dssn_jax
from dssn_jax import models
from dssn_jax.core import smoothing
from dssn_jax.data import datasets
from dssn_jax.data import eval_input
from dssn_jax.models import dncnn
from dssn_jax.reports import denoised
from dssn_jax.runs import certify_workdir
from dssn_jax.runs import results_metadata
from dssn_jax.runs import results_reader
from dssn_jax.training import checkpoints
from dssn_jax.training import denoiser as denoiser_training
from dssn_jax.training import denoising
from dssn_jax.training import metrics as training_metrics


def smoke_config(data_dir=None, **overrides):
  config = fashion_mnist_config.get_config("smoke")
  config.data_dir = data_dir
  config.denoiser.depth = 3
  config.denoiser.width = 8
  config.update(overrides)
  return config


def random_last_layer(variables, seed=1, scale=0.3):
  """The DnCNN with a random last conv (zero at init: the identity)."""
  params = jax.tree.map(lambda a: a, variables["params"])
  kernel = params["conv_out"]["kernel"]
  params["conv_out"]["kernel"] = scale * jax.random.normal(
      jax.random.key(seed), kernel.shape
  )
  return {**variables, "params": params}


# ---------------------------------------------------------------------------
# DnCNN.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("channels, size", [(1, (28, 28)), (3, (8, 12))])
def test_dncnn_shapes_and_residual_form(channels, size):
  model = models.create_denoiser("dncnn", channels=channels, depth=4, width=6)
  x = jax.random.uniform(jax.random.key(0), (2, *size, channels))
  variables = model.init(jax.random.key(1), x)
  assert set(variables["params"]) == {
      "conv_in",
      "conv1",
      "conv2",
      "bn1",
      "bn2",
      "conv_out",
  }
  assert variables["params"]["conv_out"]["kernel"].shape == (3, 3, 6, channels)
  identity = model.apply(variables, x)
  assert identity.shape == x.shape and identity.dtype == jnp.float32
  np.testing.assert_array_equal(identity, x)  # Zero-initialized last conv.
  variables = random_last_layer(variables)
  out, state = model.apply(variables, x, capture_intermediates=True)
  noise = state["intermediates"]["conv_out"]["__call__"][0]
  assert noise.shape == x.shape and float(jnp.abs(noise).max()) > 1e-3
  np.testing.assert_allclose(out, x - noise, rtol=0, atol=1e-6)


def test_dncnn_bad_arguments():
  with pytest.raises(ValueError, match="Unknown denoiser"):
    models.create_denoiser("unet", channels=1, depth=3, width=4)
  with pytest.raises(ValueError, match="depth >= 2"):
    models.create_denoiser("dncnn", channels=1, depth=1, width=4)
  model = models.create_denoiser("dncnn", channels=3, depth=3, width=4)
  with pytest.raises(ValueError, match="3 channels"):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


def test_forward_flops_match_xla():
  model = models.create_denoiser("dncnn", channels=1, depth=5, width=16)
  x = jnp.zeros((1, 28, 28, 1))
  variables = model.init(jax.random.key(0), x)
  cost = jax.jit(model.apply).lower(variables, x).compile().cost_analysis()
  analytic = dncnn.forward_flops(28, 28, 1, depth=5, width=16)
  # XLA counts the padded borders' zeros out and BatchNorm/ReLU in.
  assert analytic == pytest.approx(cost["flops"], rel=0.1)


# ---------------------------------------------------------------------------
# Checkpoints of a classifier and a denoiser (untrained, saved as trained).
# ---------------------------------------------------------------------------


def save_classifier(config, workdir, seed=0):
  info = datasets.dataset_info(config.dataset)
  model = models.create_model(
      config.model, num_classes=info.num_classes, mean=info.mean, std=info.std
  )
  variables = model.init(
      jax.random.key(seed), jnp.zeros((1,) + tuple(info.input_shape))
  )
  metadata = checkpoints.smoothing_metadata(config)
  checkpointer = checkpoints.Checkpointer(workdir)
  checkpointer.save(1, dict(variables), metadata)
  checkpointer.close()


def save_denoiser(config, workdir, seed=1):
  info = datasets.dataset_info(config.dataset)
  cfg = config.denoiser
  model = models.create_denoiser(
      cfg.model, channels=info.input_shape[-1], depth=cfg.depth, width=cfg.width
  )
  variables = random_last_layer(
      model.init(
          jax.random.key(seed), jnp.zeros((1,) + tuple(info.input_shape))
      ),
      seed=seed,
      scale=0.05,
  )
  spec = smoothing.SmoothingSpec(config.sigma, config.q)
  offsets = smoothing.make_offsets(
      config.offsets_seed, info.input_shape, spec.levels, config.offsets_layout
  )
  metadata = denoiser_training.denoiser_metadata(config, offsets, None)
  checkpointer = checkpoints.Checkpointer(workdir)
  checkpointer.save(1, dict(variables), metadata)
  checkpointer.close()


@pytest.fixture(scope="module", name="pair")
def fixture_pair(tmp_path_factory):
  """Workdirs of a clean classifier and of a DSSN denoiser at sigma 0.5."""
  root = tmp_path_factory.mktemp("pair")
  save_classifier(smoke_config(noise="none"), str(root / "clf"))
  save_denoiser(smoke_config(), str(root / "den"))
  save_denoiser(smoke_config(), str(root / "den_other"), seed=2)
  return root


@pytest.mark.slow
def test_composed_counts_equal_hand_composed(pair):
  classifier = checkpoints.load_classifier(str(pair / "clf"))
  denoiser = denoising.load_denoiser(str(pair / "den"))
  composed = denoising.compose(classifier, denoiser)
  config = smoke_config()
  info = datasets.dataset_info(config.dataset)
  clf = models.create_model(
      config.model, num_classes=info.num_classes, mean=info.mean, std=info.std
  )
  den = models.create_denoiser("dncnn", channels=1, depth=3, width=8)
  apply_fn = lambda p, x: clf.apply(p["clf"], den.apply(p["den"], x))
  params = {"clf": classifier.variables, "den": denoiser.variables}
  x = (
      jnp.round(jax.random.uniform(jax.random.key(3), (3, 28, 28, 1)) * 255)
      / 255
  )
  spec = dssn_jax.SmoothingSpec(0.5)
  v = dssn_jax.make_offsets(0, (28, 28, 1), spec.levels)
  expected = dssn_jax.dssn_counts(apply_fn, x, v, spec, params=params)
  got = dssn_jax.dssn_counts(
      composed.apply_fn,
      x,
      composed.offsets,
      composed.spec,
      params=composed.variables,
      chunk_size=37,
  )
  np.testing.assert_array_equal(got, expected)
  assert int(expected.sum()) == 3 * spec.levels
  # The denoiser matters: the classifier alone votes otherwise.
  alone = dssn_jax.dssn_counts(
      classifier.apply_fn, x, v, spec, params=classifier.variables
  )
  assert not np.array_equal(alone, expected)
  assert composed.metadata["noise"] == "dssn"
  assert composed.metadata["denoised"]["denoiser_sha256"] == denoiser.sha256


def certify_config(data_dir, denoiser_workdir, **certify):
  config = smoke_config(data_dir)
  config.certify.max_examples = 4
  config.certify.denoiser_workdir = denoiser_workdir
  config.certify.update(certify)
  return config


def copy_tree(source, target):
  import shutil  # pylint: disable=g-import-not-at-top

  shutil.copytree(source, target)
  return str(target)


@pytest.mark.slow
def test_certify_workdir_records_both_and_refuses_another(
    pair, tmp_path, fashion_mnist_data_dir
):
  clf = copy_tree(pair / "clf", tmp_path / "clf")
  config = certify_config(fashion_mnist_data_dir, str(pair / "den"))
  summary = certify_workdir.certify_workdir(config, clf)
  assert summary["images"] == 4
  meta = results_metadata.read_metadata(summary["results"])["run"]
  denoised = meta["denoised"]
  assert (
      denoised["denoiser_sha256"]
      == denoising.load_denoiser(str(pair / "den")).sha256
  )
  assert denoised["classifier_sha256"] == denoising.variables_fingerprint(
      checkpoints.load_classifier(clf).variables
  )
  assert denoised["denoiser_trained_for_this_classifier"] is None
  assert meta["training_noise"] == "dssn"
  # The rows are those of the library on the composed classifier.
  rows = results_reader.read_results(summary["results"])
  composed = denoising.compose(
      checkpoints.load_classifier(clf),
      denoising.load_denoiser(str(pair / "den")),
  )
  batch = next(
      iter(
          eval_input.eval_dataset(
              "fashion_mnist",
              max_examples=4,
              batch_size=4,
              data_dir=fashion_mnist_data_dir,
          )
      )
  )
  counts = dssn_jax.dssn_counts(
      composed.apply_fn,
      jnp.asarray(batch["image"], jnp.float32) / 255,
      composed.offsets,
      composed.spec,
      params=composed.variables,
  )
  pred, _, radius = dssn_jax.certify_from_counts(
      np.asarray(counts), composed.spec
  )
  order = np.argsort(rows["idx"])
  np.testing.assert_array_equal(rows["predict"][order], pred)
  np.testing.assert_array_equal(rows["radius"][order], radius)
  # Resuming the same file with another denoiser or no denoiser is refused.
  for other in (str(pair / "den_other"), ""):
    config = certify_config(fashion_mnist_data_dir, other)
    with pytest.raises(ValueError, match="different run.*denoise"):
      certify_workdir.certify_workdir(config, clf)


def test_run_smoothing_must_agree_with_the_denoiser(
    pair, tmp_path, fashion_mnist_data_dir
):
  clf = copy_tree(pair / "clf", tmp_path / "clf")
  config = certify_config(fashion_mnist_data_dir, str(pair / "den"))
  config.sigma = 0.25
  with pytest.raises(ValueError, match="disagrees.*sigma"):
    certify_workdir.certify_workdir(config, clf)


def test_noisy_classifier_must_share_the_denoisers_smoothing(tmp_path):
  save_classifier(smoke_config(offsets_seed=7), str(tmp_path / "clf"))
  save_denoiser(smoke_config(), str(tmp_path / "den"))
  with pytest.raises(ValueError, match="offsets_seed"):
    denoising.compose(
        checkpoints.load_classifier(str(tmp_path / "clf")),
        denoising.load_denoiser(str(tmp_path / "den")),
    )
  # Same smoothing: fine (a classifier trained on top of a denoiser).
  save_classifier(smoke_config(), str(tmp_path / "clf_dssn"))
  denoising.compose(
      checkpoints.load_classifier(str(tmp_path / "clf_dssn")),
      denoising.load_denoiser(str(tmp_path / "den")),
  )


def certify_cli(classifier, denoiser, data_dir, *flags):
  command = [
      sys.executable,
      "-m",
      "experiments.certify",
      "--config=configs/fashion_mnist.py:smoke",
      f"--workdir={classifier}",
      f"--config.data_dir={data_dir}",
      f"--config.certify.denoiser_workdir={denoiser}",
      "--config.certify.max_examples=2",
      *flags,
  ]
  return subprocess.run(
      command,
      cwd=pathlib.Path(__file__).parents[1],
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
  )


@pytest.mark.slow
def test_cli_certifies_from_two_workdirs(
    pair, tmp_path, fashion_mnist_data_dir
):
  clf = copy_tree(pair / "clf", tmp_path / "clf")
  run = certify_cli(clf, pair / "den", fashion_mnist_data_dir)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "2 images, dssn at sigma=0.5" in run.stdout
  meta = results_metadata.read_metadata(f"{clf}/certify_dssn.tsv")["run"]
  assert meta["denoised"]["denoiser_step"] == 1
  # One refusal through the CLI (one line, exit 1); the library tests above
  # cover the others, each a ValueError that `user_errors` turns into one.
  run = certify_cli(clf, pair / "den_other", fashion_mnist_data_dir)
  assert run.returncode == 1, run.stderr[-2000:]
  assert "denoiser_sha256" in run.stderr and "Traceback" not in run.stderr


def test_a_classifier_is_not_a_denoiser(pair):
  with pytest.raises(ValueError, match="not a denoiser"):
    denoising.load_denoiser(str(pair / "clf"))


# ---------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------


def final_metrics(workdir):
  with open(f"{workdir}/{training_metrics.METRICS_FILE}") as f:
    return [json.loads(line) for line in f][-1]


@pytest.mark.slow
def test_smoke_training_lowers_the_mse(tmp_path, fashion_mnist_data_dir):
  config = smoke_config(fashion_mnist_data_dir, steps_per_epoch=20)
  workdir = str(tmp_path / "den")
  denoiser_training.train_denoiser(config, workdir)
  metrics = final_metrics(workdir)
  # The untrained DnCNN is the identity, whose MSE is the noisy input's.
  assert metrics["eval_denoised_mse"] < 0.8 * metrics["eval_noisy_mse"]
  denoiser = denoising.load_denoiser(workdir)
  meta = denoiser.metadata
  assert (meta["kind"], meta["objective"], meta["noise"]) == (
      "denoiser",
      "mse",
      "dssn",
  )
  assert meta["offsets_sha256"] == smoothing.offsets_fingerprint(
      denoiser.offsets
  )
  assert meta["classifier_sha256"] == ""
  # Read like a classifier's training data: one shard per process.
  assert meta["data_shards"] == 1
  # The epoch's stepping and evaluation times are in its metrics.
  assert metrics["train_seconds"] > 0 and metrics["eval_seconds"] > 0


@pytest.mark.slow
def test_stability_training_moves_only_the_denoiser(
    tmp_path, fashion_mnist_data_dir
):
  clf = str(tmp_path / "clf")
  save_classifier(smoke_config(noise="none"), clf)
  before = checkpoints.load_classifier(clf).variables
  config = smoke_config(fashion_mnist_data_dir, num_epochs=1)
  config.denoiser.objective = "stability"
  config.denoiser.classifier_workdir = clf
  workdir = str(tmp_path / "den")
  state = denoiser_training.train_denoiser(config, workdir)
  assert "eval_classifier_accuracy" in final_metrics(workdir)
  assert float(jnp.abs(state.params["conv_out"]["kernel"]).max()) > 0
  meta = denoising.load_denoiser(workdir).metadata
  assert meta["objective"] == "stability"
  assert meta["classifier_sha256"] == denoising.variables_fingerprint(before)
  jax.tree.map(
      np.testing.assert_array_equal,
      before,
      checkpoints.load_classifier(clf).variables,
  )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("noise", "none", "trained under noise"),
        ("denoiser.objective", "l1", "Unknown denoiser objective"),
        ("denoiser.objective", "stability", "classifier_workdir"),
    ],
)
def test_bad_denoiser_config(tmp_path, field, value, message):
  config = smoke_config(str(tmp_path / "tfds"))
  if "." in field:
    config.denoiser[field.split(".")[1]] = value
  else:
    config[field] = value
  with pytest.raises(ValueError, match=message):
    denoiser_training.train_denoiser(config, str(tmp_path / "run"))


class KilledError(Exception):
  pass


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_and_refuses_other_objective(
    tmp_path, fashion_mnist_data_dir, monkeypatch
):
  config = smoke_config(fashion_mnist_data_dir)
  straight = denoiser_training.train_denoiser(config, str(tmp_path / "a"))
  original_save = checkpoints.Checkpointer.save

  def save_then_die(self, step, state, metadata, **kwargs):
    original_save(self, step, state, metadata, **kwargs)
    raise KilledError(f"killed after saving step {step}")

  workdir = str(tmp_path / "b")
  monkeypatch.setattr(checkpoints.Checkpointer, "save", save_then_die)
  with pytest.raises(KilledError):
    denoiser_training.train_denoiser(config, workdir)
  monkeypatch.setattr(checkpoints.Checkpointer, "save", original_save)
  assert checkpoints.Checkpointer(workdir).latest_step() == (
      config.steps_per_epoch
  )
  other = smoke_config(fashion_mnist_data_dir)
  other.denoiser.width = 4
  with pytest.raises(ValueError, match="disagrees.*width"):
    denoiser_training.train_denoiser(other, workdir)
  resumed = denoiser_training.train_denoiser(config, workdir)
  jax.tree.map(
      np.testing.assert_array_equal,
      {"p": straight.params, "b": straight.batch_stats},
      {"p": resumed.params, "b": resumed.batch_stats},
  )
  steps = [
      json.loads(line)["step"]
      for line in open(f"{workdir}/{training_metrics.METRICS_FILE}")
  ]
  assert steps == sorted(set(steps)), "no duplicated metric rows"


@pytest.mark.slow
def test_docs_denoised_example_runs(capsys):
  import re  # pylint: disable=g-import-not-at-top

  doc = (pathlib.Path(__file__).parents[1] / "docs" / "denoised.md").read_text()
  blocks = [
      b
      for b in re.findall(r"```python\n(.*?)```", doc, re.S)
      if 'p["clf"]' in b
  ]
  assert len(blocks) == 1, "docs/denoised.md shows the composed apply_fn once"
  code = compile(blocks[0], "docs/denoised.md", "exec")
  exec(code, {})  # pylint: disable=exec-used
  assert capsys.readouterr().out.strip(), "the example prints certificates"


def test_committed_study_tables_regenerate_from_committed_results():
  repo = pathlib.Path(__file__).parents[1]
  docs = repo / "docs"
  groups = denoised.build_groups(
      str(docs / "denoised" / "results"),
      str(docs / "fashion_mnist" / "results"),
  )
  tables = denoised.report(
      groups, denoised.RADII, denoising.forward_flops(groups)
  )
  assert tables == (docs / "denoised" / "tables.md").read_text()
  assert "# Denoised smoothing on Fashion-MNIST: 1000 test images" in tables


def _run(name, sigma, idx, correct, radius):
  from dssn_jax.reports import certified_runs  # pylint: disable=g-import-not-at-top

  idx = np.asarray(idx)
  return certified_runs.CertifiedRun(
      name=name,
      dataset="fashion_mnist",
      method="dssn",
      sigma=sigma,
      stabilized=False,
      results={
          "idx": idx,
          "label": np.zeros_like(idx),
          "predict": np.zeros_like(idx),
          "correct": np.asarray(correct, bool),
          "radius": np.asarray(radius, float),
          "time": np.ones(idx.size),
      },
      seconds_per_image=1.0,
  )


def test_report_tables_runs_on_a_subset_separately():
  full = _run("a", 0.5, [0, 10, 20, 30], [1, 1, 1, 0], [0.6, 0.3, 0.1, 0.0])
  part = _run("b", 0.5, [0, 10], [1, 0], [0.3, 0.0])
  text = denoised.report(
      {"A": [full], "B": [part]}, (0.25, 0.5), {"A": 1e6, "B": 2e6}
  )
  main, subset = text.split("## 2 of those images")[:2]
  assert "4 test images" in main
  assert (
      "| A (σ = 0.5) | 50.0% (75.0% @ σ=0.5) | 25.0% (75.0% @ " "σ=0.5) |"
  ) in main
  assert "| B | fewer images: below | fewer images: below |" in main
  # On images {0, 10}: A certifies 0 at 0.6 and 10 at 0.3.
  assert (
      "| A (σ = 0.5) | 100.0% (100.0% @ σ=0.5) | 50.0% (100.0% @ " "σ=0.5) |"
  ) in subset
  assert "| B (σ = 0.5) | 50.0% (50.0% @ σ=0.5) | 0.0% |" in subset
  other = _run("c", 0.5, [5], [1], [0.3])
  with pytest.raises(ValueError, match="not a subset"):
    denoised.report({"A": [full], "C": [other]}, (0.25,), {})
