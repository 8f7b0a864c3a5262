"""README.md's and docs/*.md's commands, code and references work as written.

What is checked, and how:

- Every `python -m experiments.*` / `python -m benchmarks.*` command, in a
  shell block or in inline code, is parsed by absl exactly as its entry point
  parses it (slow tier; one child process, `python -m
  tests.docs_commands_test`), without calling its main: the module imports,
  every flag exists and its value parses, each --config file and :variant
  loads, and every --config.field override names a real field and its value
  parses as the field's type. Loop variables (`for s in 0.5 1`) take their
  first value. A command with a placeholder (`...`) is checked up to it (its
  required flags may be missing). None of these commands is run: they train,
  certify or benchmark for minutes to hours (tests/jobs_test.py and others
  run the smoke configurations of the same code).
- experiments/denoised_study.sh, named by docs/denoised.md, is checked by
  `bash -n` only (slow tier).
- Python blocks: README's first block runs in tests/readme_test.py; the
  others run here (slow tier) except those that read files a run produces
  (`_NOT_RUN`, with the reason), and every block compiles and imports only
  names that exist (fast tier).
- Repository paths (`dssn_jax/...`, `tests/...`, relative links) and dotted
  names (`dssn_jax.runtime.xla_options`, `smoothing.make_offsets`) quoted in
  the docs exist (fast tier).
"""

import ast
import dataclasses
import importlib
import json
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.conftest import run_python

DOCS = (REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")))
PACKAGE = REPO_ROOT / "dssn_jax"
_ENTRY = re.compile(r"(experiments|benchmarks)\.\w+")
_SEPARATORS = {";", "&", "&&", "|", "||"}
# Python blocks that cannot run here, by the doc and their first line.
_NOT_RUN = {
    ("docs/authors_models.md", "import numpy as np"): (
        "reads the authors' published archive and a certification run of "
        "their CIFAR-10 model (10,000 images)"
    ),
    (
        "README.md",
        "import jax, jax.numpy as jnp",
    ): "tests/readme_test.py runs it",
    ("docs/accelerators.md", "from dssn_jax.core import placement"): (
        "needs .venv-aot's TPU compiler and minutes per ResNet-50 compile; "
        "tests/aot_test.py compiles the same program through the same calls"
    ),
}


@dataclasses.dataclass(frozen=True)
class Command:
  """One documented `python -m <module> <args>`, where it is written."""

  where: str  # "docs/x.md:12"
  module: str
  args: tuple[str, ...]


def _rel(path: pathlib.Path) -> str:
  return str(path.relative_to(REPO_ROOT))


def _fenced_blocks(text: str):
  """(first line number, language, body) of each ``` block."""
  pattern = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)
  for m in pattern.finditer(text):
    indent = len(m.group(1))
    body = "".join(line[indent:] for line in m.group(3).splitlines(True))
    yield text.count("\n", 0, m.start()) + 2, m.group(2), body


def _prose(text: str) -> str:
  """The text with its fenced blocks blanked (line numbers kept)."""
  pattern = re.compile(r"^( *)```.*?^\1```", re.M | re.S)
  return pattern.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def _inline_code(text: str):
  """(line number, content) of each `...` span outside fenced blocks."""
  prose = _prose(text)
  for m in re.finditer(r"`([^`]+)`", prose):
    yield prose.count("\n", 0, m.start()) + 1, m.group(1)


def _tokens(line: str) -> list[str]:
  lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
  lexer.whitespace_split = True
  return list(lexer)


def shell_commands(script: str) -> list[tuple[int, str, list[str]]]:
  """(line offset, module, args) of each `python -m` in a shell script.

  Continuation lines are joined, comments dropped, lines split at ; & && |
  ||; `for VAR in A ...` binds VAR to A for the lines after it; a quoted
  argument holding a whole command (`--command="... python -m ..."`) is
  searched too; an optional argument written `[--flag=value]` counts.
  """
  found = []
  variables = {}
  lines = script.split("\n")
  joined, start = [], 0
  for number, line in enumerate(lines):
    if not joined:
      start = number
    joined.append(line.rstrip())
    if line.rstrip().endswith("\\"):
      joined[-1] = joined[-1][:-1]
      continue
    text, joined = " ".join(joined), []
    segment = []
    for token in _tokens(text) + [";"]:
      if token not in _SEPARATORS:
        segment.append(token)
        continue
      while segment and segment[0] in ("do", "then", "else"):
        segment = segment[1:]
      if segment[:1] == ["for"] and len(segment) >= 4:
        variables[segment[1]] = segment[3]
      elif segment:
        for module, args in _python_m(segment, variables):
          found.append((start, module, args))
      segment = []
  return found


def _python_m(segment: list[str], variables: dict[str, str]):
  """(module, args) of the `python -m` in one simple command, or in an
  argument that holds a command line."""

  def substitute(token):
    return re.sub(
        r"\$\{?(\w+)\}?",
        lambda m: variables.get(m.group(1), m.group(0)),
        token,
    )

  for k, token in enumerate(segment):
    if token.endswith("python") and segment[k + 1 : k + 2] == ["-m"]:
      args = [substitute(a) for a in segment[k + 3 :]]
      args = [
          a[1:-1] if a.startswith("[-") and a.endswith("]") else a for a in args
      ]
      yield substitute(segment[k + 2]), args
      return
  for token in segment:
    if "python -m " in token:
      for _, module, args in shell_commands(substitute(token)):
        yield module, args


def documented_commands() -> list[Command]:
  """Every `python -m experiments.*|benchmarks.*` of README and docs."""
  commands = []
  for doc in DOCS:
    text = doc.read_text()
    snippets = [
        (line, body)
        for line, lang, body in _fenced_blocks(text)
        if lang in ("bash", "sh", "shell")
    ]
    snippets += [
        (line, " ".join(code.split()))
        for line, code in _inline_code(text)
        if "python -m " in " ".join(code.split())
    ]
    for line, snippet in snippets:
      for offset, module, args in shell_commands(snippet):
        if _ENTRY.fullmatch(module):
          where = f"{_rel(doc)}:{line + offset}"
          commands.append(Command(where, module, tuple(args)))
  return commands


# ----------------------------------------------------------------------------
# Fast tier: the extraction, paths, names and Python blocks.
# ----------------------------------------------------------------------------


def test_shell_parser_finds_every_form_of_command():
  script = (
      "export XLA_FLAGS=--xla_force_host_platform_device_count=2\n"
      "for s in 0.5 1; do\n"
      "  python -m experiments.train --config=c.py:full_n \\\n"
      "      --config.sigma=$s --workdir=runs/u_$s &  # trailing comment\n"
      "done; wait\n"
      "DSSN_JAX_XLA_DEFAULTS=0 .venv/bin/python -m experiments.certify ...\n"
      'ssh host --command="cd x && \\\n'
      '  python -m experiments.train --config=c.py --distributed_auto"\n'
      "python -m experiments.analyze --out=a [--timing_out=t.json]\n"
      "git clone https://example.org/repo\n"
  )
  found = [(m, a) for _, m, a in shell_commands(script)]
  assert found == [
      (
          "experiments.train",
          [
              "--config=c.py:full_n",
              "--config.sigma=0.5",
              "--workdir=runs/u_0.5",
          ],
      ),
      ("experiments.certify", ["..."]),
      ("experiments.train", ["--config=c.py", "--distributed_auto"]),
      ("experiments.analyze", ["--out=a", "--timing_out=t.json"]),
  ]


def test_every_python_m_in_the_docs_is_extracted():
  """No documented command escapes the parse check below."""
  commands = documented_commands()
  for doc in DOCS:
    written = len(
        re.findall(
            r"python -m (?:experiments|benchmarks)\.\w+",
            " ".join(doc.read_text().split()),
        )
    )
    extracted = sum(c.where.startswith(_rel(doc) + ":") for c in commands)
    assert extracted == written, (_rel(doc), extracted, written)
  assert len(commands) > 30


_PATH = re.compile(
    r"(?<![\w/.-])((?:dssn_jax|experiments|benchmarks|configs|tests|docs)"
    r"/[\w./-]*\w)"
)


def test_repository_paths_in_the_docs_exist():
  """Paths under the repository's folders, bare module file names
  (`checkpoints.py`) and relative links name files that exist."""
  python_files = {
      p.name
      for folder in ("dssn_jax", "experiments", "benchmarks", "configs")
      for p in (REPO_ROOT / folder).rglob("*.py")
  } | {p.name for p in (REPO_ROOT / "tests").rglob("*.py")}
  missing = []
  for doc in DOCS:
    text = doc.read_text()
    for m in _PATH.finditer(text):
      path = m.group(1).split(":")[0]  # configs/x.py:variant
      if not (REPO_ROOT / path).exists():
        missing.append(f"{_rel(doc)}: {path}")
    for m in re.finditer(r"(?<![\w/*.-])(\w+\.py)\b", text):
      if m.group(1) not in python_files:
        missing.append(f"{_rel(doc)}: {m.group(1)} (no such file)")
    for m in re.finditer(r"\]\(([^)\s#]+)\)", text):
      link = m.group(1)
      if "://" not in link and not (doc.parent / link).exists():
        missing.append(f"{_rel(doc)}: link {link}")
  assert not missing, "\n".join(missing)


def _defined_names(path: pathlib.Path) -> set[str]:
  """Top-level names a module defines, imports or re-exports."""
  names = set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, ast.Assign):
      names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
      names.add(node.target.id)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names |= {(a.asname or a.name).split(".")[0] for a in node.names}
  return names


def resolve(dotted: str) -> str | None:
  """None when `dssn_jax.a.b.name` exists (a package, module or a name a
  module defines), else what is missing."""
  parts = dotted.split(".")
  path = REPO_ROOT / parts[0]
  for k, part in enumerate(parts[1:], start=1):
    if (path / part).is_dir():
      path = path / part
    elif (path / f"{part}.py").is_file():
      path = path / f"{part}.py"
      if k + 1 < len(parts) and parts[k + 1] not in _defined_names(path):
        return f"{'.'.join(parts[: k + 2])}"
      return None
    else:
      init = path / "__init__.py"
      if init.is_file() and part in _defined_names(init):
        return None
      return ".".join(parts[: k + 1])
  return None


def test_the_name_check_tells_what_is_missing():
  assert resolve("dssn_jax.runtime.xla_options.apply_defaults") is None
  assert resolve("dssn_jax.use_cpu_defaults") is None
  assert resolve("dssn_jax.core") is None
  assert resolve("dssn_jax.no_such_layer.x") == "dssn_jax.no_such_layer"
  assert resolve("dssn_jax.core.smoothing.no_such_name") == (
      "dssn_jax.core.smoothing.no_such_name"
  )
  assert resolve("dssn_jax.no_such_name") == "dssn_jax.no_such_name"


def _module_basenames() -> dict[str, list[pathlib.Path]]:
  found = {}
  for path in PACKAGE.rglob("*.py"):
    if path.name != "__init__.py":
      found.setdefault(path.stem, []).append(path)
  return found


_FILE_SUFFIXES = {"py", "md", "json", "jsonl", "tsv", "png", "sh", "txt"}


def test_dotted_names_in_the_docs_exist():
  """`dssn_jax.x.y`, `experiments.x` and `<module>.<name>` where <module> is
  one of the library's modules (a unique basename) name real things."""
  modules = _module_basenames()
  missing = []
  for doc in DOCS:
    for line, code in _inline_code(doc.read_text()):
      where = f"{_rel(doc)}:{line}"
      for m in re.finditer(r"\bdssn_jax(?:\.\w+)+", code):
        if (gap := resolve(m.group(0))) is not None:
          missing.append(f"{where}: {m.group(0)} ({gap} does not exist)")
      for m in re.finditer(
          r"(?<![\w.])((?:experiments|benchmarks)\.\w+)", code
      ):
        if not (REPO_ROOT / (m.group(1).replace(".", "/") + ".py")).exists():
          missing.append(f"{where}: module {m.group(1)}")
      for m in re.finditer(r"(?<![\w./])([a-z_]\w*)\.([A-Za-z_]\w*)", code):
        paths = modules.get(m.group(1), [])
        if m.group(2) in _FILE_SUFFIXES:
          continue  # A file name (`checkpoints.py`), not an attribute.
        if len(paths) == 1 and m.group(2) not in _defined_names(paths[0]):
          missing.append(f"{where}: {m.group(0)} ({_rel(paths[0])})")
  assert not missing, "\n".join(missing)


def design_module_map() -> set[str]:
  """The modules docs/design.md's module map lists, as paths."""
  text = (REPO_ROOT / "docs" / "design.md").read_text()
  section = text[text.index("### Module map") :]
  body = next(b for _, lang, b in _fenced_blocks(section) if lang == "")
  listed, folders = set(), []
  for line in body.splitlines():
    m = re.match(r"( *)(\w+(?:/|\.py))(?: |$)", line)
    if not m or len(m.group(1)) % 2:
      continue  # A continuation of the previous line's description.
    depth = len(m.group(1)) // 2
    folders = folders[:depth]
    if m.group(2).endswith("/"):
      folders.append(m.group(2))
    elif folders[:1] == ["dssn_jax/"]:
      listed.add("".join(folders) + m.group(2))
  return listed


def test_design_module_map_lists_every_module():
  """docs/design.md, section 5, maps every module of the package, and no
  module that is gone."""
  modules = {
      _rel(p)
      for p in PACKAGE.rglob("*.py")
      if p.name != "__init__.py" or p.parent == PACKAGE
  }
  listed = design_module_map()
  assert not modules - listed, f"not in the map: {sorted(modules - listed)}"
  assert not listed - modules, f"gone: {sorted(listed - modules)}"


def python_blocks():
  """(doc, line, body) of every ```python block of README and docs."""
  for doc in DOCS:
    for line, lang, body in _fenced_blocks(doc.read_text()):
      if lang == "python":
        yield _rel(doc), line, body


def test_python_blocks_compile_and_import_real_names():
  wrong = []
  for doc, line, body in python_blocks():
    tree = ast.parse(compile(body, f"{doc}:{line}", "exec", ast.PyCF_ONLY_AST))
    for node in ast.walk(tree):
      names = []
      if isinstance(node, ast.ImportFrom) and node.module.startswith(
          "dssn_jax"
      ):
        names = [f"{node.module}.{a.name}" for a in node.names]
      elif isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name.startswith("dssn_jax")]
      for name in names:
        if (gap := resolve(name)) is not None:
          wrong.append(f"{doc}:{line}: {name} ({gap} does not exist)")
  assert not wrong, "\n".join(wrong)


# ----------------------------------------------------------------------------
# Slow tier: parse every command as its entry point would; run the blocks.
# ----------------------------------------------------------------------------


def parse_commands(commands: list[tuple[str, list[str]]]) -> list[dict]:
  """In this process: each command's flags parsed by absl as `python -m
  module args` would parse them, without calling main. Returns one dict per
  command: {"error": message or None, "placeholder": bool}."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  # The flags the packages define (experiments/__init__.py's multi-host
  # flags) stay registered; each entry module's own go after its commands.
  for package in ("experiments", "benchmarks"):
    importlib.import_module(package)
  shared = set(flags.FLAGS)
  outcomes = []
  for module, args in commands:
    sys.argv = [module, *args]  # config_flags reads overrides from sys.argv.
    error = None
    try:
      importlib.import_module(module)
      rest = flags.FLAGS(sys.argv)[1:]
      stray = [a for a in rest if a != "..."]
      if stray:
        error = f"unexpected arguments {stray}"
    except Exception as e:  # pylint: disable=broad-except
      error = f"{type(e).__name__}: {e}"
      if "..." in args and "must have a value other than None" in error:
        error = None  # A placeholder stands for the required flags.
    finally:
      flags.FLAGS.unparse_flags()
      for name in set(flags.FLAGS) - shared:
        delattr(flags.FLAGS, name)
      for name in [m for m in sys.modules if _ENTRY.fullmatch(m)]:
        del sys.modules[name]
    outcomes.append(
        {"error": error and error[:800], "placeholder": "..." in args}
    )
  return outcomes


def _parse_in_child(commands: list[tuple[str, list[str]]]) -> list[dict]:
  result = run_python(
      ["-m", "tests.docs_commands_test"],
      input=json.dumps(commands),
      timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith("RESULTS ")]
  assert line, result.stdout[-2000:] + result.stderr[-2000:]
  return json.loads(line[-1][len("RESULTS ") :])


@pytest.mark.slow
def test_documented_commands_parse_as_written():
  commands = documented_commands()
  base = next(c for c in commands if c.module == "experiments.train")
  # Broken variants of a real command: the check must catch each one.
  broken = [
      (base.module, [*base.args, "--config.no_such_field=1"]),
      (base.module, [*base.args, "--no_such_flag=1"]),
      (base.module, [*base.args, "--config.sigma=not_a_number"]),
      (
          base.module,
          [
              "--config=configs/fashion_mnist.py:no_such_variant",
              "--workdir=runs/x",
          ],
      ),
      ("experiments.no_such_module", []),
  ]
  outcomes = _parse_in_child(
      [(c.module, list(c.args)) for c in commands] + broken
  )
  documented, caught = outcomes[: len(commands)], outcomes[len(commands) :]
  assert all(o["error"] for o in caught), list(zip(broken, caught))
  failures = [
      f"{c.where}: python -m {c.module} {' '.join(c.args)}\n  {o['error']}"
      for c, o in zip(commands, documented)
      if o["error"]
  ]
  assert not failures, "\n".join(failures)
  partial = [c.where for c, o in zip(commands, documented) if o["placeholder"]]
  print(
      f"{len(commands)} documented commands parsed as written "
      f"({len(partial)} up to a placeholder: {', '.join(partial)}); "
      "none run"
  )


@pytest.mark.slow
def test_study_script_is_valid_bash():
  script = REPO_ROOT / "experiments" / "denoised_study.sh"
  assert (
      "bash experiments/denoised_study.sh"
      in (REPO_ROOT / "docs" / "denoised.md").read_text()
  )
  result = subprocess.run(
      ["bash", "-n", str(script)], capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, result.stderr


def _runnable_blocks():
  return [
      (doc, line, body)
      for doc, line, body in python_blocks()
      if (doc, body.splitlines()[0]) not in _NOT_RUN
  ]


def test_only_the_listed_blocks_are_not_run():
  """_NOT_RUN names real blocks (a renamed one would run unnoticed)."""
  firsts = {(doc, body.splitlines()[0]) for doc, _, body in python_blocks()}
  assert set(_NOT_RUN) <= firsts
  assert _runnable_blocks()


@pytest.mark.slow
@pytest.mark.parametrize(
    "doc,line,body",
    _runnable_blocks(),
    ids=[f"{d}:{n}" for d, n, _ in _runnable_blocks()],
)
def test_python_block_runs(doc, line, body, capsys):
  exec(compile(body, f"{doc}:{line}", "exec"), {})  # pylint: disable=exec-used
  assert capsys.readouterr().out.strip() or "print(" not in body


if __name__ == "__main__":
  print("RESULTS " + json.dumps(parse_commands(json.loads(sys.stdin.read()))))
