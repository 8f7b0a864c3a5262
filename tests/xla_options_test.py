"""Tests for dssn_jax.runtime.xla_options and the computation record of
results."""

import os

from absl import logging
import pytest

from dssn_jax.runs import results_metadata
from dssn_jax.runs import results_writer
from dssn_jax.runs import run_records
from dssn_jax.runtime import xla_options
from tests.conftest import run_python

_BOGUS = "--xla_cpu_no_such_option_for_dssn_tests=1"


def test_jaxlib_knows_its_flags_and_not_others():
  assert xla_options.jaxlib_knows(xla_options.DEFAULT_FLAGS[0])
  assert xla_options.jaxlib_knows("--xla_force_host_platform_device_count=2")
  assert not xla_options.jaxlib_knows(_BOGUS)  # Tried in a child process.


def test_tested_flags_table_holds_for_the_installed_jaxlib():
  """Each flag the table says this jaxlib accepts does start a backend
  (the check to rerun when constraints.txt's jaxlib pin moves)."""
  version = xla_options._jaxlib_version()  # pylint: disable=protected-access
  tested = [
      flag
      for flag, versions in xla_options.TESTED_FLAGS.items()
      if version in versions
  ]
  assert tested, f"jaxlib {version} is in no row of TESTED_FLAGS"
  for name in tested:
    flag = next(
        (f for f in xla_options.DEFAULT_FLAGS if f.startswith(name + "=")),
        name + "=2",
    )
    accepted = xla_options._accepted_by_backend.__wrapped__(flag)  # pylint: disable=protected-access
    assert accepted, f"jaxlib {version} refuses {flag}"


def test_importing_the_library_changes_nothing_in_the_process():
  """`import dssn_jax` leaves os.environ as `import jax` left it, starts no
  backend and imports no TensorFlow."""
  code = (
      "import os, sys, jax; before = dict(os.environ); "
      "import dssn_jax, dssn_jax.core.chunking, dssn_jax.core.methods; "
      "from dssn_jax.runtime import xla_options; "
      "assert dict(os.environ) == before, set(os.environ.items()) ^ "
      "set(before.items()); "
      "assert not xla_options._backend_started(); "
      "assert 'tensorflow' not in sys.modules; print('clean')"
  )
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = run_python(["-c", code], env=env, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "clean"


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
      "import os, dssn_jax, jax; "
      "from dssn_jax.runtime import xla_options; "
      f"dssn_jax.use_cpu_defaults(({_BOGUS!r},) + xla_options.DEFAULT_FLAGS);"
      " print(len(jax.devices()), os.environ.get('XLA_FLAGS'))"
  )
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = run_python(["-c", code], env=env, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split()[0] == "1"
  assert "no_such_option" not in result.stdout
  # The documented call applied the defaults (the import alone does not).
  assert xla_options.DEFAULT_FLAGS[0] in result.stdout


def _results_file(tmp_path):
  path = str(tmp_path / "certify_dssn.tsv")
  with results_writer.ResultsWriter(path, "dssn", {"sigma": 0.5}):
    pass
  return path


def test_resume_under_other_computation_is_refused(tmp_path):
  path = _results_file(tmp_path)
  record = xla_options.computation_record("float32")
  run_records.check_computation(path, record, allow_other=False)
  run_records.check_computation(path, record, allow_other=False)  # Same.
  other = dict(record, xla_flags="")
  with pytest.raises(
      ValueError,
      match=r"xla_flags: .* then, '' now.*" r"allow_other_computation=True",
  ):
    run_records.check_computation(path, other, allow_other=False)
  assert results_metadata.read_metadata(path)["computation"] == [record]


def test_resume_under_other_computation_when_allowed(tmp_path, monkeypatch):
  path = _results_file(tmp_path)
  record = xla_options.computation_record("float32")
  run_records.check_computation(path, record, allow_other=False)
  other = dict(record, compute_dtype="bfloat16")
  warnings = []
  monkeypatch.setattr(
      logging, "warning", lambda msg, *args: warnings.append(msg % args)
  )
  run_records.check_computation(path, other, allow_other=True)
  assert "compute_dtype: 'float32' then, 'bfloat16' now" in warnings[0]
  assert results_metadata.read_metadata(path)["computation"] == [record, other]
