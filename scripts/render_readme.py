"""Render nbs/index.ipynb into README.md (nbdev_readme needs Quarto, which is not available here).

Markdown cells are copied; code cells show their source (without `#|` lines) and their text output,
or only the output when marked `#| echo: false`; cells marked `#| hide` are skipped.
`python scripts/render_readme.py` writes README.md; `--check` exits 1 when README.md is stale."""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDEX, README = ROOT/'nbs'/'index.ipynb', ROOT/'README.md'

def _text(out) -> str:
    if out.get('output_type') == 'stream': return ''.join(out.get('text', ''))
    return ''.join(out.get('data', {}).get('text/markdown', out.get('data', {}).get('text/plain', '')))

def render(nb_path: Path = INDEX) -> str:
    nb = json.loads(nb_path.read_text())
    parts = []
    for cell in nb['cells']:
        src = ''.join(cell['source'])
        lines = src.splitlines()
        flags = {l[2:].strip() for l in lines if l.startswith('#|')}
        if 'hide' in flags or any(f.startswith('default_exp') for f in flags): continue
        if cell['cell_type'] == 'markdown': parts.append(src.strip()); continue
        code = '\n'.join(l for l in lines if not l.startswith('#|')).strip()
        if code and 'echo: false' not in flags: parts.append(f'```python\n{code}\n```')
        output = ''.join(_text(o) for o in cell.get('outputs', [])).strip()
        if output:  # markdown tables print as tables on GitHub
            parts.append(output if output.lstrip().startswith('|') else f'```\n{output}\n```')
    return '\n\n'.join(parts) + '\n'

def main(argv):
    text = render()
    if '--check' in argv:
        if not README.exists() or README.read_text() != text:
            print('README.md is out of date with nbs/index.ipynb: run `python scripts/render_readme.py`.')
            return 1
        return 0
    README.write_text(text)
    print(f'wrote {README}')
    return 0

if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
