"""Code lines outside a method's own module that name a method (issue 19, goal 1): the places that
would have to change when a method is added, renamed or removed.

Names: the entry names in `vlprompt.bench.METHODS` (coop, maple, vpt_deep, ...), the method module names
(`bench.METHOD_MODULES`) and the classes those modules define (CoOp, MaPLe, ...). A line of
`vlprompt/*.py` above the methods' layer (bench, launch, speed, cli, classroom, widgets) counts once when
one of its Python tokens names one: an identifier that is a name or has one as a `_`-separated part
(`taskres_setting`), a string that is such a word (`'coop'`) or a dotted path through `methods.`.
Comments and prose (docstrings, messages) do not count, nor templates such as
f'vlprompt.methods.{name}' (the discovery itself). The layers below the methods cannot import one;
their `zeroshot_weights` or `coop_name` are CLIP's zero-shot classifier and CoOp's dataset names.
Usage: python scripts/count_method_names.py [--list]"""
import importlib, inspect, io, re, sys, tokenize
from collections import Counter
from pathlib import Path
import vlprompt.bench as bench

BELOW = ('_modidx', '__init__', 'clip', 'micro', 'data', 'train')
pkg = Path(bench.__file__).parent
entries = set(bench.METHODS) | set(bench.METHOD_MODULES)
classes = set()
for m in bench.METHOD_MODULES:
    mod = importlib.import_module(f'vlprompt.methods.{m}')
    classes |= {n for n, o in vars(mod).items()
                if inspect.isclass(o) and o.__module__ == mod.__name__}
lower = entries | {c.lower() for c in classes}

def names_method(tok) -> bool:
    word_names = lambda s: s in classes or s in lower or any(p in entries for p in s.split('_'))
    if tok.type == tokenize.NAME: return word_names(tok.string)
    if tok.type == tokenize.STRING:
        s = re.sub(r'^[rbfuRBFU]*("""|\'\'\'|"|\')', '', tok.string)[:-1].strip('"\'')
        if '{' in s: return False  # a template: the discovery itself
        if re.fullmatch(r'\w+', s): return word_names(s) or word_names(s.lower())
        return 'methods.' in s
    return False

hits = []
for f in sorted(pkg.glob('*.py')):
    if f.stem in BELOW: continue
    text = f.read_text(); lines = text.splitlines(); seen = set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if names_method(tok) and tok.start[0] not in seen:
            seen.add(tok.start[0])
            hits.append(f'{f.name}:{tok.start[0]}: {lines[tok.start[0] - 1].strip()[:100]}')
if '--list' in sys.argv: print('\n'.join(hits))
print(dict(Counter(h.split(':')[0] for h in hits)), 'total', len(hits))
