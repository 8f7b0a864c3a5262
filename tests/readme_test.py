"""README.md's library example runs as written (the other commands, code
and references of README.md and docs/: tests/docs_commands_test.py)."""

import pathlib
import re

README = pathlib.Path(__file__).parents[1] / "README.md"


def test_readme_library_example_runs(capsys):
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  assert blocks, "README.md has no python example"
  exec(compile(blocks[0], str(README), "exec"), {})  # pylint: disable=exec-used
  printed = capsys.readouterr().out
  assert printed.strip(), "the example prints its certificates"
