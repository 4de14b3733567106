"Exported code reads in a 100-column window (issue 19): a check on the files nbdev_export writes."
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 100

def long_lines(text: str) -> list[int]:
    "Numbers of the lines over WIDTH columns, less nbdev's own `__all__` block (nbdev 2 wraps it at 120)."
    out, in_all = [], False
    for i, line in enumerate(text.split('\n'), 1):
        if line.startswith('__all__ = ['): in_all = True
        if not in_all and len(line) > WIDTH: out.append(i)
        if in_all and line.rstrip().endswith(']'): in_all = False
    return out

def test_long_lines_finds_long_code_and_skips_nbdevs_all():
    text = '\n'.join(['x = 1', '__all__ = [' + "'name', " * 20, "           'last']",
                      'y = ' + '1 + ' * 30 + '1', '# ' + 'word ' * 25])
    assert long_lines(text) == [4, 5]

def test_exported_lines_fit_in_100_columns():
    files = [p for p in sorted((ROOT/'vlprompt').rglob('*.py')) if p.name != '_modidx.py']
    bad = [f'{p.relative_to(ROOT)}:{i}' for p in files for i in long_lines(p.read_text())]
    assert not bad, (f'{len(bad)} exported lines are longer than {WIDTH} columns; shorten them in '
                     'the notebooks (nbs/) and run `make export`:\n' + '\n'.join(bad[:40]))
