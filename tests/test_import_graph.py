"""The import graph of `affjax`, read from the source with `ast` (lazy imports inside functions included): no
cycle, and the models import no data module."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'affjax'


def module_names(root: pathlib.Path = PACKAGE) -> dict[str, pathlib.Path]:
  """Every module and package of `root` by its dotted name ('affjax.data.pipeline', 'affjax.models')."""
  names = {}
  for path in sorted(root.rglob('*.py')):
    parts = path.relative_to(root.parent).with_suffix('').parts
    names['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  return names


def imported_modules(name: str, path: pathlib.Path, modules) -> set[str]:
  """The modules of `modules` that module `name` imports anywhere in its body (top level, functions, classes).

  `from a.b import c` is module `a.b.c` when that is a module, else (c is a name defined in it) module `a.b`;
  relative imports are resolved against the module's package. Importing `a.b.c` also runs `a/b/__init__.py`,
  which is not counted: a package that re-exports its own modules is not a cycle.
  """
  package = name if path.name == '__init__.py' else name.rpartition('.')[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = package.rsplit('.', node.level - 1)[0] if node.level > 1 else package
        base = f'{anchor}.{base}' if base else anchor
      for alias in node.names:
        found.add(f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base)
  return {m for m in found if m in modules and m != name}


def import_graph(root: pathlib.Path = PACKAGE) -> dict[str, set[str]]:
  modules = module_names(root)
  return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as [m0, m1, ..., m0] (each imports the next), or None."""
  state, stack = {}, []  # state: 1 on the current path, 2 done

  def visit(node):
    state[node] = 1
    stack.append(node)
    for child in sorted(graph[node]):
      if state.get(child) == 1:
        return stack[stack.index(child):] + [child]
      if child not in state:
        cycle = visit(child)
        if cycle:
          return cycle
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_finds_a_cycle_through_lazy_and_relative_imports(tmp_path):
  pkg = tmp_path / 'pkg'
  (pkg / 'sub').mkdir(parents=True)
  for f in ('__init__.py', 'sub/__init__.py'):
    (pkg / f).write_text('')
  (pkg / 'a.py').write_text('from pkg.sub import b\nX = 1\n')
  (pkg / 'sub' / 'b.py').write_text('def f():\n  from .. import c  # lazy\n')
  (pkg / 'c.py').write_text('from pkg.a import X\n')  # a name of module pkg.a
  graph = import_graph(pkg)
  assert graph == {'pkg': set(), 'pkg.sub': set(), 'pkg.a': {'pkg.sub.b'}, 'pkg.sub.b': {'pkg.c'}, 'pkg.c': {'pkg.a'}}
  assert find_cycle(graph) == ['pkg.a', 'pkg.sub.b', 'pkg.c', 'pkg.a']
  (pkg / 'c.py').write_text('import numpy\n')
  assert find_cycle(import_graph(pkg)) is None


def test_affjax_has_no_import_cycle():
  graph = import_graph()
  assert len(graph) > 50 and 'affjax.train.loop' in graph['affjax.main']  # a lazy import
  cycle = find_cycle(graph)
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


@pytest.mark.parametrize('low,high', [('affjax.models', 'affjax.data'), ('affjax.data', 'affjax.train'),
                                      ('affjax.models', 'affjax.systems'), ('affjax.data', 'affjax.systems')])
def test_lower_layers_import_nothing_above(low, high):
  """Dependencies point down: the models import no data module; the data modules import no training module;
  neither imports a system (the shared building blocks and the views know no system)."""
  graph = import_graph()
  upward = sorted(f'{m} imports {d}' for m, deps in graph.items() if m == low or m.startswith(low + '.')
                  for d in deps if d == high or d.startswith(high + '.'))
  assert not upward, '; '.join(upward)
