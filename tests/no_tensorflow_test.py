"""Training and certification on prepared data import no TensorFlow: the
entry points run in a subprocess under `python -X importtime`, whose list of
every imported module must not hold `tensorflow` (TFDS's data sources and
Grain read the ArrayRecord files without it)."""

import re

import pytest

from tests.conftest import run_python

# An -X importtime line of a module named tensorflow or tensorflow.<...>
# (not tensorflow_datasets, which reads the files without TensorFlow).
_TF_IMPORT = re.compile(r"\|\s*tensorflow(\.\S+)?\s*$", re.MULTILINE)


@pytest.mark.slow
def test_train_and_certify_import_no_tensorflow(
    tmp_path, fashion_mnist_data_dir
):
  flags = [
      "--config=configs/fashion_mnist.py:smoke",
      f"--config.data_dir={fashion_mnist_data_dir}",
      f"--workdir={tmp_path / 'run'}",
  ]
  for entry_point in ("experiments.train", "experiments.certify"):
    done = run_python(["-X", "importtime", "-m", entry_point, *flags])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "import time:" in done.stderr  # The list is there to check.
    found = _TF_IMPORT.findall(done.stderr)
    assert not found, f"{entry_point} imported TensorFlow"
  assert (tmp_path / "run" / "checkpoints").is_dir()
  # TensorBoard's scalars, written without TensorFlow, read back by it.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top

  events = event_accumulator.EventAccumulator(str(tmp_path / "run"))
  events.Reload()
  assert [e.step for e in events.Scalars("train_loss")][:2] == [1, 2]
