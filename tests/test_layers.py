"""The package's layers point down only (issue 19, goal 5): every import between `vlprompt` modules,
at module top or inside a function, goes to the same layer or a lower one, and no two modules import
each other, directly or around a circle. The layers, lowest first:

0. `clip`: loading CLIPs, tokenising, the prompted encoders, the kit's error and file helpers;
   it knows no world and no dataset.
1. `micro` (the micro world), `micro_ssl` (its self-supervised ViT), `data` (datasets; it
   reads the micro world's tasks).
2. `train`: the loop, evaluation, metrics.
3. `methods.*`: one module per method (a method may build on another, e.g. ProGrad on CoOp).
4. `bench`: the protocols, run folders, `reproduce`, tables.
5. `launch`, `speed`, `cli`, `classroom`, `widgets`: what people drive. `widgets` sits here, beside
   the commands: its explorers call the protocols (`bench.base_to_new`), and `speed` reuses them."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1]/'vlprompt'
LAYERS = {'clip': 0, 'micro': 1, 'micro_ssl': 1, 'data': 1, 'train': 2, 'methods': 3, 'bench': 4,
          'launch': 5, 'speed': 5, 'cli': 5, 'classroom': 5, 'widgets': 5}

def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)

def is_module(name: str) -> bool:
    rel = Path(*name.split('.'))
    return (PKG.parent/rel).with_suffix('.py').exists() or (PKG.parent/rel/'__init__.py').exists()

def imports_of(path: Path) -> set[str]:
    "Every `vlprompt` module that the file imports, wherever the import statement sits."
    me, found = module_name(path), set()
    package = me if path.name == '__init__.py' else me.rpartition('.')[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import): found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                up = package.split('.')
                up = up[:len(up) - node.level + 1]
                base = '.'.join(up + ([base] if base else []))
            for alias in node.names:
                sub = f'{base}.{alias.name}'
                found.add(sub if is_module(sub) else base)
    return {m for m in found if m.split('.')[0] == 'vlprompt' and m != me}

def graph() -> dict[str, set[str]]:
    files = [p for p in PKG.rglob('*.py') if p.name != '_modidx.py']
    return {module_name(p): imports_of(p) for p in files}

def layer(module: str) -> int | None:
    "The layer of `vlprompt.X` (None for the package itself: it only holds the version)."
    parts = module.split('.')
    return LAYERS[parts[1]] if len(parts) > 1 else None

def upward_imports(g: dict[str, set[str]]) -> list[str]:
    return sorted(f'{a} (layer {layer(a)}) imports {b} (layer {layer(b)})'
                  for a, deps in g.items() for b in deps
                  if layer(a) is not None and layer(b) is not None and layer(b) > layer(a))

def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    "One circle per strongly connected group of modules (Tarjan)."
    index, low, stack, on, groups = {}, {}, [], set(), []
    def visit(v):
        index[v] = low[v] = len(index); stack.append(v); on.add(v)
        for w in g.get(v, ()):
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop(); on.discard(w); group.append(w)
                if w == v: break
            if len(group) > 1 or v in g.get(v, ()): groups.append(sorted(group))
    for v in sorted(g):
        if v not in index: visit(v)
    return groups

def test_every_module_has_a_layer():
    missing = sorted(m for m in graph() if layer(m) is None and m != 'vlprompt')
    assert not missing, f'modules without a layer in tests/test_layers.py LAYERS: {missing}'

def test_no_import_cycles():
    found = cycles(graph())
    circles = '; '.join(' <-> '.join(c) for c in found)
    assert not found, f'import cycles between vlprompt modules: {circles}'

def test_imports_point_down():
    up = upward_imports(graph())
    assert not up, 'imports that point up the layers:\n' + '\n'.join(up)

def test_checks_can_fail():
    "The checks see a cycle and an upward import when there is one."
    g = {'vlprompt.clip': {'vlprompt.micro'}, 'vlprompt.micro': {'vlprompt.clip'}}
    assert cycles(g) == [['vlprompt.clip', 'vlprompt.micro']]
    assert upward_imports(g) == ['vlprompt.clip (layer 0) imports vlprompt.micro (layer 1)']
    assert 'vlprompt.micro' in graph()['vlprompt.data']  # in-function imports are seen too
