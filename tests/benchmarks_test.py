"""The benchmarks (benchmarks/): the smoke variant end to end, the tuning
trials and the device split, each in its own process where it needs one.

No timing assertions: the figures depend on the machine and its load. The
tests check that the report is complete and sane.
"""

import json
import os
import re

import jax
import numpy as np
import pytest

from benchmarks import aot_markdown
from benchmarks import certifier
from benchmarks import certifier_markdown
from benchmarks import isolated
from benchmarks import measure
from benchmarks import stem_layout
from benchmarks import tuning
from configs import benchmark as benchmark_config
import dssn_jax
from tests.conftest import REPO_ROOT
from tests.conftest import run_python
from tests.programs import child_calls


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("benchmark"))
  config = benchmark_config.get_config("smoke")
  report = certifier.run_benchmark(config, workdir, log=lambda _: None)
  return report, workdir


@pytest.mark.slow
def test_smoke_writes_json_and_markdown(smoke_report):
  report, workdir = smoke_report
  with open(os.path.join(workdir, certifier.RESULTS_JSON)) as f:
    saved = json.load(f)
  assert saved["environment"]["backend"] == jax.default_backend()
  assert saved["models"][0]["model"] == "small_cnn"
  with open(os.path.join(workdir, certifier.RESULTS_MARKDOWN)) as f:
    markdown = f.read()
  for heading in (
      "## Peak: square matrix product",
      "## Forward pass and certification",
      "## Training step",
  ):
    assert heading in markdown
  assert markdown.count("| small_cnn | float32 |") >= 3  # 2 sigmas + train.
  assert (
      report["load_average_start"] is None
      or len(report["load_average_start"]) == 3
  )


def _positive_stats(stats):
  return 0 < stats["min"] <= stats["median"] <= stats["max"] and stats["n"] > 0


@pytest.mark.slow
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
  stats = measure.summarize([3.0, 1.0, 2.0])
  assert stats == {"median": 2.0, "min": 1.0, "max": 3.0, "spread": 1.0, "n": 3}
  ratio = measure.per_round([2.0, 4.0, 9.0], [1.0, 2.0, 3.0])
  assert ratio["median"] == 2.0 and ratio["max"] == 3.0


@pytest.mark.slow
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
  with open(os.path.join(workdir, certifier.RESULTS_MARKDOWN)) as f:
    assert "## Forward batch sweep" in f.read()


@pytest.mark.slow
def test_xla_flag_trials_run_each_setting_in_its_own_process():
  # Two identical settings: same logits, ratios near 1 (no timing bound).
  trials = tuning.xla_flag_trials(
      ["", "--xla_cpu_enable_fast_min_max=false"],
      [("small_cnn", 4)],
      alternations=1,
      peak_size=64,
      repeats=1,
      log=lambda _: None,
  )
  assert [t["flags"] for t in trials["trials"]] == [
      "",
      "--xla_cpu_enable_fast_min_max=false",
  ]
  baseline, other = trials["settings"]
  assert not baseline["errors"] and not other["errors"]
  assert baseline["ratio_to_baseline"]["small_cnn"]["median"] == 1.0
  assert _positive_stats(other["flops_per_second"]["small_cnn"])
  assert baseline["same_logits_as_baseline"]
  lines = "\n".join(tuning.to_markdown({"flag_trials": trials}))
  assert "xla_cpu_enable_fast_min_max" in lines


@pytest.mark.slow
def test_xla_flag_trials_report_a_failing_setting():
  trials = tuning.xla_flag_trials(
      ["--xla_this_flag_does_not_exist=1"],
      [("small_cnn", 4)],
      alternations=1,
      peak_size=64,
      repeats=1,
      log=lambda _: None,
  )
  (entry,) = trials["settings"]
  assert entry["errors"] and "flops_per_second" not in entry


@pytest.mark.slow
def test_device_split_runs_in_its_own_process():
  report = certifier.device_split_report(2, sigma=0.05, batch=4)
  assert "error" not in report, report.get("error")
  by_batch, by_samples = report["cases"]
  assert (by_batch["split"], by_samples["split"]) == ("batch", "noise samples")
  for case in report["cases"]:
    assert case["identical_to_one_device"]
    assert case["row_sums"] == [report["levels"]]
    assert case["per_device_share"] == pytest.approx(0.5, abs=0.05)


@pytest.mark.slow
def test_train_ratio_reports_where_the_epoch_went(
    tmp_path, fashion_mnist_data_dir
):
  outdir = str(tmp_path / "out")
  done = run_python(
      [
          "-m",
          "benchmarks.train_ratio",
          "--config=configs/fashion_mnist.py:smoke",
          f"--config.data_dir={fashion_mnist_data_dir}",
          f"--outdir={outdir}",
          "--step_rounds=1",
          "--steps=2",
      ]
  )
  assert done.returncode == 0, done.stderr[-2000:]
  with open(os.path.join(outdir, "train_ratio.json")) as f:
    report = json.load(f)
  assert report["steps_per_epoch"] == 3 and report["steady_epochs"] == 1
  assert report["ratio"] > 0 and report["stepping_ratio"] > 0
  assert report["stepping_seconds"] > 0 and report["eval_seconds"] > 0
  parts = (
      report["stepping_seconds"]
      + report["eval_seconds"]
      + report["other_seconds"]
  )
  assert abs(parts - report["steady_seconds"]) < 1e-6


def test_markdown_of_the_device_split_and_its_errors():
  report = {
      "environment": {
          "backend": "cpu",
          "device_kind": "cpu",
          "device_count": 1,
          "processor": "x86_64",
          "cpu_count": 2,
          "jax_version": jax.__version__,
          "xla_flags": "",
      },
      "peak": [{"dtype": "bfloat16", "size": 64, "supported": False}],
      "models": [],
      "training": [],
      "device_split": [
          {"devices": 2, "error": "Traceback ..."},
          {
              "devices": 4,
              "cases": [
                  {
                      "batch": 8,
                      "split": "batch",
                      "chunk_per_device": 44,
                      "per_device_input_batches": [2, 88],
                      "per_device_share": 0.25,
                      "identical_to_one_device": True,
                  }
              ],
          },
      ],
  }
  markdown = certifier_markdown.to_markdown(report)
  assert "XLA_FLAGS `(none)`" in markdown
  assert "| bfloat16 | 64 | unsupported |" in markdown
  assert "| 2 | error | | | | | |" in markdown
  assert "| 4 | 8 | batch | 44 | [2, 88] | 0.25 | True |" in markdown
  assert "## Training step" not in markdown  # Sections not measured.


def test_early_exit_study_tables_from_the_committed_results():
  """docs/early_exit.md's tables: early-exit DSSN gives the full run's
  answers at every sigma, sequential uniform the fixed run's certified
  accuracy (the per-image files are checked on reading). In its own
  process: the module's absl flags would clash with other benchmarks'."""
  result = run_python(
      [
          "-m",
          "benchmarks.early_exit_study",
          "--workdir=docs/early_exit/results",
      ]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [r for r in result.stdout.splitlines() if r.startswith("| ")]
  dssn = [r for r in rows if "| 1000 |" in r and "x | yes |" in r]
  assert len(dssn) == 4, result.stdout
  uniform = [r for r in rows if "| 100,000 |" in r]
  assert len(uniform) == 2 and all(r.endswith("| 0 |") for r in uniform)
  study = [r for r in rows if "N_max = 100,000 | 1000 |" in r]
  assert len(study) == 4, result.stdout  # The four sigmas, 1,000 images.
  # Best over sigma, from all four sigmas: DSSN's row is the committed
  # full runs' (docs/fashion_mnist.md quotes both rows).
  best = [r for r in rows if "| 0.25, 0.5, 1, 2 | 1000 |" in r]
  assert len(best) == 2, result.stdout
  assert best[1].startswith("| DSSN (exact) |")
  assert "| 84.1 (@ 0.25) | 81.0 (@ 1) | 77.5 (@ 1) | 75.3 (@ 2) |" in best[1]


def test_space_to_depth_stem_is_the_stem():
  """benchmarks/stem_layout.py's transform: the 4 x 4 / 1 convolution over
  2 x 2 blocks computes the model's 7 x 7 / 2 stem (up to the order of the
  sums), at even and odd block counts."""
  rng = np.random.default_rng(0)
  kernel = rng.standard_normal((7, 7, 3, 5))
  for size in (16, 18):
    x = rng.random((2, size, size, 3))
    want = stem_layout.stem(x, kernel)
    got = stem_layout.stem_space_to_depth(
        stem_layout.space_to_depth(x), stem_layout.space_to_depth_kernel(kernel)
    )
    assert got.shape == want.shape == (2, size // 2, size // 2, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="7 x 7"):
    stem_layout.space_to_depth_kernel(np.zeros((3, 3, 3, 5)))


def test_aot_markdown_rows(tmp_path):
  """benchmarks/aot_markdown.py: rows in the order of the targets, the
  compiler's estimate before the roofline, MFU only where the target
  counted the bytes, memory over the device's and errors marked."""
  gib = 2**30
  common = {"program": "p", "model_flops_per_image": 459e12 * 0.05}
  rows = [
      # The GPU: roofline of the host's FLOP count, no MFU.
      dict(
          common,
          target="1x H100",
          chips=1,
          batch=1,
          compile_seconds=3.0,
          device_bytes=100 * gib,
          hbm_bytes=79 * gib,
          flops_counted_by="host cpu (model)",
          roofline_seconds_per_image_slice=0.02,
      ),
      # A v5p slice of 4 chips: 0.025 s of the slice per image is 0.1 s
      # of a chip; MFU = 0.05 s at peak / 0.1 s.
      dict(
          common,
          target="v5p-8",
          chips=4,
          batch=4,
          forward_batch_per_device=442,
          compile_seconds=150.0,
          device_bytes=2 * gib,
          hbm_bytes=95 * gib,
          flops_counted_by="target",
          flops_per_image=2.5e13,
          compiler_seconds_per_image_slice=0.025,
          roofline_seconds_per_image_slice=0.015,
      ),
      dict(common, target="v4-8", batch=8, error="XlaRuntimeError: a|b"),
  ]
  path = tmp_path / "aot.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  lines = aot_markdown.tables(str(path)).splitlines()
  assert lines[0] == "#### p"
  body = [line for line in lines[4:] if line]
  assert [line.split(" | ")[0] for line in body] == [
      "| v4-8",
      "| v5p-8",
      "| 1x H100",
  ]
  assert "fails: XlaRuntimeError: a/b" in body[0]
  assert body[1] == (
      "| v5p-8 | 4 | 442 | 150 | 2.00 (95) | 25000.0 | 0.1 | 0.06 | 36,000 "
      "| 144,000 | 50% |"
  )
  assert body[2] == (
      "| 1x H100 | 1 | - | 3 | 100.00 (79) does not fit | - | - | 0.02 "
      "| 180,000 | 180,000 | - |"
  )
  assert aot_markdown.tables(str(path), ["q"]) == ""


def test_accelerator_tables_are_the_committed_rows():
  """docs/accelerators.md, "Results": one table per program of
  docs/accelerators/aot.jsonl, each exactly what `python -m benchmarks.aot
  --markdown` prints from the committed rows (so a figure in the tables
  cannot drift from its data)."""
  doc = (REPO_ROOT / "docs" / "accelerators.md").read_text()
  results = doc.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
  tables = re.findall(r"^#### .*?(?=\n\n(?!\|)|\n*\Z)", results, re.M | re.S)
  rows = str(REPO_ROOT / "docs" / "accelerators" / "aot.jsonl")
  with open(rows) as f:
    programs = {json.loads(line)["program"] for line in f if line.strip()}
  named = [t.splitlines()[0].removeprefix("#### ") for t in tables]
  assert sorted(named) == sorted(programs)
  for name, table in zip(named, tables):
    assert table.strip() == aot_markdown.tables(rows, [name]).strip(), name


def test_isolated_call_returns_or_reports_the_crash():
  """benchmarks/isolated.py, which benchmarks/aot.py compiles each row
  through: the child's result, or on_crash's value when it dies."""
  assert isolated.call(child_calls.square, 3, on_crash=lambda m: None) == 9
  message = isolated.call(child_calls.segfault, on_crash=lambda m: m)
  assert message == (
      "the process was killed by signal 11 (SIGSEGV) before it returned"
  )
  with pytest.raises(ValueError, match="no square"):
    isolated.call(child_calls.square, "x", on_crash=lambda m: None)
