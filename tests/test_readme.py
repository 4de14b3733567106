"README.md says what nbs/index.ipynb says (it is rendered from it by scripts/render_readme.py)."
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('render_readme', ROOT/'scripts'/'render_readme.py')
render_readme = importlib.util.module_from_spec(spec); spec.loader.exec_module(render_readme)

def test_readme_is_rendered_from_index():
    assert (ROOT/'README.md').read_text() == render_readme.render(), \
        'README.md is out of date with nbs/index.ipynb: run `python scripts/render_readme.py`.'

def test_readme_has_the_two_commands():
    text = (ROOT/'README.md').read_text()
    assert 'make demo' in text and 'make test' in text
    assert '| micro-pairs | 64 |' in text  # the index notebook's saved output: the demo's table
