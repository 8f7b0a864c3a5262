"""Tests for dssn_jax.runtime.xla_options and the computation record of results."""

import os
import subprocess
import sys

from absl import logging
import pytest

from dssn_jax.runs import certify_workdir
from dssn_jax.runs import results
from dssn_jax.runtime import xla_options

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BOGUS = "--xla_cpu_no_such_option_for_dssn_tests=1"


def test_jaxlib_knows_its_flags_and_not_others():
  assert xla_options.jaxlib_knows(xla_options.DEFAULT_FLAGS[0])
  assert xla_options.jaxlib_knows("--xla_force_host_platform_device_count=2")
  assert not xla_options.jaxlib_knows(_BOGUS)


@pytest.fixture
def fresh(monkeypatch):
  """apply_defaults as before a backend starts, with a clean XLA_FLAGS."""
  monkeypatch.setattr(xla_options, "_backend_started", lambda: False)
  monkeypatch.setattr(
      xla_options, "_state", {"applied": (), "skipped": (), "user_flags": None}
  )
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv(xla_options.OPT_OUT_VARIABLE, raising=False)
  return monkeypatch


def test_defaults_are_appended_to_the_users_flags(fresh):
  fresh.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  assert xla_options.apply_defaults() == xla_options.DEFAULT_FLAGS
  assert os.environ["XLA_FLAGS"] == " ".join(
      ("--xla_force_host_platform_device_count=2",) + xla_options.DEFAULT_FLAGS
  )
  # The device count is not part of what is computed; the option is.
  assert xla_options.flags_in_force() == " ".join(xla_options.DEFAULT_FLAGS)
  assert xla_options.apply_defaults() == ()  # Already there: not twice.


def test_users_own_value_wins(fresh):
  mine = "--xla_cpu_experimental_ynn_fusion_type=+eltwise"
  fresh.setenv("XLA_FLAGS", mine)
  assert xla_options.apply_defaults() == ()
  assert os.environ["XLA_FLAGS"] == mine


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_opt_out(fresh, value):
  fresh.setenv(xla_options.OPT_OUT_VARIABLE, value)
  assert xla_options.apply_defaults() == ()
  assert "XLA_FLAGS" not in os.environ


def test_nothing_changes_once_the_backend_runs(fresh):
  fresh.setattr(xla_options, "_backend_started", lambda: True)
  assert xla_options.apply_defaults() == ()
  assert "XLA_FLAGS" not in os.environ


def test_unknown_flag_is_skipped(fresh):
  added = xla_options.apply_defaults((_BOGUS,) + xla_options.DEFAULT_FLAGS)
  assert added == xla_options.DEFAULT_FLAGS
  assert _BOGUS not in os.environ["XLA_FLAGS"]


def test_computation_record():
  record = xla_options.computation_record("bfloat16")
  assert set(record) == {
      "backend",
      "jax",
      "jaxlib",
      "compute_dtype",
      "xla_flags",
  }
  assert record["compute_dtype"] == "bfloat16"
  assert record["backend"] == "cpu"


@pytest.mark.slow
def test_unknown_flag_never_aborts_the_process():
  # XLA aborts on an unknown flag in XLA_FLAGS: the guard must keep it out.
  code = (
      "from dssn_jax.runtime import xla_options; import os, jax; "
      f"xla_options.apply_defaults(({_BOGUS!r},)); "
      "print(len(jax.devices()), os.environ.get('XLA_FLAGS'))"
  )
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run(
      [sys.executable, "-c", code],
      cwd=_REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split()[0] == "1"
  assert "no_such_option" not in result.stdout
  assert xla_options.DEFAULT_FLAGS[0] in result.stdout  # Import applied it.


def _results_file(tmp_path):
  path = str(tmp_path / "certify_dssn.tsv")
  with results.ResultsWriter(path, "dssn", {"sigma": 0.5}):
    pass
  return path


def test_resume_under_other_computation_is_refused(tmp_path):
  path = _results_file(tmp_path)
  record = xla_options.computation_record("float32")
  certify_workdir._check_computation(path, record, allow_other=False)
  certify_workdir._check_computation(path, record, allow_other=False)  # Same.
  other = dict(record, xla_flags="")
  with pytest.raises(
      ValueError,
      match=r"xla_flags: .* then, '' now.*" r"allow_other_computation=True",
  ):
    certify_workdir._check_computation(path, other, allow_other=False)
  assert results.read_metadata(path)["computation"] == [record]


def test_resume_under_other_computation_when_allowed(tmp_path, monkeypatch):
  path = _results_file(tmp_path)
  record = xla_options.computation_record("float32")
  certify_workdir._check_computation(path, record, allow_other=False)
  other = dict(record, compute_dtype="bfloat16")
  warnings = []
  monkeypatch.setattr(
      logging, "warning", lambda msg, *args: warnings.append(msg % args)
  )
  certify_workdir._check_computation(path, other, allow_other=True)
  assert "compute_dtype: 'float32' then, 'bfloat16' now" in warnings[0]
  assert results.read_metadata(path)["computation"] == [record, other]
