r"""A multi-process entry point without data or model, for the start-up tests.

  python -m tests.programs.process_agreement --coordinator_address=... \
      --num_processes=2 --process_id=i [--value=x] [--fail_on=i] [--hang]

Joins the distributed runtime as every entry point does
(`experiments.start`), then checks that all processes agree on
`{"config": {"value": --value}}` and on their computation record
(`distributed.agree`). `--fail_on=i` makes process i fail with a ValueError
first (the others go on to the agreement, where a failed peer would leave
them waiting); `--hang` makes the others wait in a barrier instead. Prints
"agreed" and exits 0 when all is well.
"""

from absl import app
from absl import flags

from dssn_jax.runtime import distributed
from dssn_jax.runtime import xla_options
import experiments

_VALUE = flags.DEFINE_string("value", "same", "The value to agree on.")
_FAIL_ON = flags.DEFINE_integer("fail_on", None, "This process fails.")
_INTERRUPT_ON = flags.DEFINE_integer(
    "interrupt_on", None, "This process gets a KeyboardInterrupt."
)
_HANG = flags.DEFINE_bool(
    "hang", False, "The others wait in a barrier (forever, alone)."
)


def main(argv):
  experiments.start(argv)
  import jax  # pylint: disable=g-import-not-at-top

  with experiments.user_errors():
    me = jax.process_index()
    if me == _FAIL_ON.value:
      raise ValueError(f"a bad setting on process {me}")
    if me == _INTERRUPT_ON.value:
      raise KeyboardInterrupt
    if _HANG.value:
      distributed.barrier("forever")
    distributed.agree(
        "start",
        {
            "config": {"value": _VALUE.value},
            "computation": xla_options.computation_record("float32"),
        },
    )
  print("agreed", flush=True)


if __name__ == "__main__":
  app.run(main)
