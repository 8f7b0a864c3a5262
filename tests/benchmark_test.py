"""The benchmark's smoke variant end to end, and the certifier's chunk sizing.

No timing assertions: the figures depend on the machine and its load. The
tests check that the report is complete and sane, and the properties the
tuning relies on (memory independent of L, chunk sizing from memory, counts
unchanged by it).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import benchmark as benchmark_config
import dssn_jax
from dssn_jax import benchmark
from dssn_jax import certify
from dssn_jax import tuning


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("benchmark"))
  config = benchmark_config.get_config("smoke")
  report = benchmark.run_benchmark(config, workdir, log=lambda _: None)
  return report, workdir


def test_smoke_writes_json_and_markdown(smoke_report):
  report, workdir = smoke_report
  with open(os.path.join(workdir, benchmark.RESULTS_JSON)) as f:
    saved = json.load(f)
  assert saved["environment"]["backend"] == jax.default_backend()
  assert saved["models"][0]["model"] == "small_cnn"
  with open(os.path.join(workdir, benchmark.RESULTS_MARKDOWN)) as f:
    markdown = f.read()
  for heading in ("## Peak: square matrix product",
                  "## Forward pass and certification",
                  "## Training step"):
    assert heading in markdown
  assert markdown.count("| small_cnn | float32 |") >= 3  # 2 sigmas + train.
  assert report["load_average_start"] is None or len(
      report["load_average_start"]) == 3


def _positive_stats(stats):
  return 0 < stats["min"] <= stats["median"] <= stats["max"] and stats["n"] > 0


def test_smoke_figures_are_sane(smoke_report):
  report, _ = smoke_report
  (peak,) = report["peak"]
  assert peak["supported"] and _positive_stats(peak["flops_per_second"])
  (row,) = report["models"]
  assert row["compute_dtype"] == "float32"
  # 3 convolutions + 2 dense layers: about 13.7 MFLOP per 28x28 image.
  assert 5e6 < row["flops_per_forward"] < 5e7
  assert row["forward_batch"] == 2 * 8  # images x chunk of the smoke config.
  assert _positive_stats(row["raw_forwards_per_second"])
  assert set(row["sigmas"]) == {"0.05", "0.1"}
  for sigma, entry in row["sigmas"].items():
    assert entry["levels"] == dssn_jax.SmoothingSpec(float(sigma)).levels
    assert entry["evaluated_items"] >= entry["levels"]
    assert entry["evaluated_items"] % entry["chunk_size"] == 0
    assert _positive_stats(entry["forwards_per_second"])
    assert _positive_stats(entry["ratio_to_raw"])
    assert _positive_stats(entry["seconds_per_image"])
    assert entry["peak_bytes"] > 0
    fusion = entry["noise_fusion"]  # The noise is made inside the loop.
    assert fusion["while_loops"] == 1
    assert not fusion["buffer_of_all_L_noisy_inputs"]
    assert fusion["noise_ops_outside_fusions"] == 0
  # One program shape for every L: the same memory at both sigmas.
  assert row["peak_bytes_ratio_max_min"] < 1.1
  end_to_end = row["end_to_end"]
  assert end_to_end["levels"] == 44
  assert _positive_stats(end_to_end["seconds_per_call"])
  host = row["host_overhead"]
  assert host["levels"] == 8
  assert _positive_stats(host["host_seconds_per_call"])
  assert report["xla_flags_applied"]  # The smoke config sets none.
  (training,) = report["training"]
  assert training["batch"] == 8
  assert _positive_stats(training["images_per_second"])
  # Forward and backward: about 3x the forward FLOPs of the batch.
  assert training["flops_per_step"] > 1.5 * 8 * row["flops_per_forward"]
  assert training["step_program"]["alias_bytes"] > 0  # The state is donated.


def test_summary_statistics():
  stats = benchmark.summarize([3.0, 1.0, 2.0])
  assert stats == {"median": 2.0, "min": 1.0, "max": 3.0, "spread": 1.0,
                   "n": 3}
  ratio = benchmark.per_round([2.0, 4.0, 9.0], [1.0, 2.0, 3.0])
  assert ratio["median"] == 2.0 and ratio["max"] == 3.0


def _mlp(width=64, classes=5):
  """apply_fn(params, x) of a 2-layer MLP on (4, 4, 3) inputs, and params."""
  params = (jax.random.normal(jax.random.key(0), (48, width)),
            jax.random.normal(jax.random.key(1), (width, classes)))

  def apply_fn(params, x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ params[0]) @ params[1]

  return apply_fn, params


def test_default_forward_batch_depends_on_the_backend():
  cpu = type("Device", (), {"platform": "cpu"})()
  gpu = type("Device", (), {"platform": "gpu"})()
  mib = 2**20
  assert certify.default_forward_batch(gpu, 20 * mib) == 512
  assert certify.default_forward_batch(cpu, None) == 512
  # Small activations: the cap; WRN-40-2's ~20 MiB: ~50; huge: the floor.
  assert certify.default_forward_batch(cpu, 1.2 * mib) == 512
  assert certify.default_forward_batch(cpu, 20.4 * mib) == 50
  assert certify.default_forward_batch(cpu, 300 * mib) == (
      certify.CPU_MIN_FORWARD_BATCH)


def test_auto_chunk_size_follows_the_memory_budget():
  apply_fn, params = _mlp()
  shape = (4, 4, 3)
  facts = certify._classifier_facts(apply_fn, params, shape)
  forward = certify.default_forward_batch(  # These tests run on a CPU.
      bytes_per_input=facts.intermediate_bytes + 4 * 48)
  unlimited = certify.auto_chunk_size(apply_fn, params, shape, 4, 1000,
                                      memory_budget=None)
  assert unlimited == certify.default_chunk_size(4, 1000, forward)
  # A budget for ~8 noisy inputs (the bound from the jaxpr is larger than
  # the activations, so the chunk only gets smaller).
  per_input = facts.intermediate_bytes + 4 * 48
  small = certify.auto_chunk_size(apply_fn, params, shape, 4, 1000,
                                  memory_budget=8 * per_input)
  assert 1 <= small < unlimited
  assert certify.auto_chunk_size(apply_fn, params, shape, 4, 1000,
                                 memory_budget=1) == 1
  # Over a mesh: each device's share of the batch, or of the samples.
  assert certify.auto_chunk_size(apply_fn, params, shape, 8, 1000, devices=4,
                                 memory_budget=None) == certify.\
      default_chunk_size(2, 1000, forward)
  assert certify.auto_chunk_size(apply_fn, params, shape, 1, 1000, devices=4,
                                 memory_budget=None) == certify.\
      default_chunk_size(1, 250, forward)


def test_counts_do_not_depend_on_the_chunk_sizing():
  apply_fn, params = _mlp()
  spec = dssn_jax.SmoothingSpec(0.12)  # L = 106.
  v = dssn_jax.make_offsets(0, (4, 4, 3), spec.levels)
  x = np.round(np.random.RandomState(0).uniform(size=(3, 4, 4, 3)) * 255)
  x = (x / 255).astype(np.float32)
  auto = np.asarray(dssn_jax.dssn_counts(apply_fn, x, v, spec,
                                         params=params))
  for chunk in (1, 5, spec.levels):  # 5: a padded last chunk.
    counts = dssn_jax.dssn_counts(apply_fn, x, v, spec, params=params,
                                  chunk_size=chunk)
    np.testing.assert_array_equal(np.asarray(counts), auto)
  assert set(auto.sum(axis=1).tolist()) == {spec.levels}


def test_memory_of_the_vote_program_does_not_depend_on_levels():
  apply_fn, params = _mlp(width=256)
  x = jnp.zeros((4, 4, 4, 3))
  peaks = []
  for sigma in (0.5, 3.5):
    spec = dssn_jax.SmoothingSpec(sigma)
    v = dssn_jax.make_offsets(0, (4, 4, 3), spec.levels)
    compiled = certify._vote_counts.lower(
        params, x, jnp.zeros(4, jnp.int32), v, apply_fn=apply_fn,
        make_noisy=certify._dssn_sample(spec), num_items=spec.levels,
        chunk_size=32, mesh=None).compile()
    peaks.append(compiled.memory_analysis().temp_size_in_bytes)
  # Up to the scan's few bytes of bookkeeping (its index vector is L/chunk
  # long: 97 int32 at sigma 3.5): no buffer scales with L.
  bookkeeping = 8 * -(-dssn_jax.SmoothingSpec(3.5).levels // 32)
  assert abs(peaks[0] - peaks[1]) <= bookkeeping + 0.01 * max(peaks)


def test_smoke_sweep_reports_every_batch(smoke_report):
  report, workdir = smoke_report
  (sweep,) = report["sweep"]
  assert sweep["model"] == "small_cnn"
  assert [e["batch"] for e in sweep["batches"]] == [8, 16]
  fractions = [e["fraction_of_best"] for e in sweep["batches"]]
  assert max(fractions) == 1.0 and min(fractions) > 0
  for entry in sweep["batches"]:
    assert _positive_stats(entry["forwards_per_second"])
    assert _positive_stats(entry["utilization"])
  with open(os.path.join(workdir, benchmark.RESULTS_MARKDOWN)) as f:
    assert "## Forward batch sweep" in f.read()


def test_xla_flag_trials_run_each_setting_in_its_own_process():
  # Two identical settings: same logits, ratios near 1 (no timing bound).
  trials = tuning.xla_flag_trials(
      ["", "--xla_cpu_enable_fast_min_max=false"], [("small_cnn", 4)],
      alternations=1, peak_size=64, repeats=1, log=lambda _: None)
  assert [t["flags"] for t in trials["trials"]] == [
      "", "--xla_cpu_enable_fast_min_max=false"]
  baseline, other = trials["settings"]
  assert not baseline["errors"] and not other["errors"]
  assert baseline["ratio_to_baseline"]["small_cnn"]["median"] == 1.0
  assert _positive_stats(other["flops_per_second"]["small_cnn"])
  assert baseline["same_logits_as_baseline"]
  lines = "\n".join(tuning.to_markdown({"flag_trials": trials}))
  assert "xla_cpu_enable_fast_min_max" in lines


def test_xla_flag_trials_report_a_failing_setting():
  trials = tuning.xla_flag_trials(
      ["--xla_this_flag_does_not_exist=1"], [("small_cnn", 4)],
      alternations=1, peak_size=64, repeats=1, log=lambda _: None)
  (entry,) = trials["settings"]
  assert entry["errors"] and "flops_per_second" not in entry
