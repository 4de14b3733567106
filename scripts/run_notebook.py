"""Run notebooks top to bottom as a reader would (IN_TEST unset) and save their outputs in place.

Skips cells marked `#| eval: false` and cells with the flags given by --skip (default: gpu), so the
committed notebooks show plots and tables on GitHub and Colab. Run `nbdev_clean` afterwards.
Usage: python scripts/run_notebook.py nbs/01_micro.ipynb [more.ipynb ...] [--skip gpu slow]"""
import argparse, os, sys, time
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell

def directives(source: str) -> dict:
    out = {}
    for line in source.splitlines():
        if line.startswith('#|'):
            words = line[2:].split()
            if words: out[words[0].rstrip(':')] = words[1:]
    return out

CLEAR_LINE = '\x1b[2K\r'  # what clear_output writes to a stream when no front end shows the widget

def drop_clear_lines(nb) -> None:
    "Remove the terminal clear-line codes that widgets' clear_output leaves in a script run's stream outputs."
    for cell in nb.cells:
        for out in cell.get('outputs', []):
            if out.get('output_type') == 'stream':
                text = ''.join(out['text']) if isinstance(out['text'], list) else out['text']
                out['text'] = text.replace(CLEAR_LINE, '').splitlines(keepends=True)
        if 'outputs' in cell: cell.outputs = [o for o in cell.outputs if o.get('output_type') != 'stream' or o['text']]

def run(path: Path, skip: set):
    nb = read_nb(path)
    def skipped(cell):
        if cell.cell_type != 'code': return True
        d = directives(cell.source)
        return (d.get('eval', [''])[0].lower() == 'false') or bool(skip & d.keys())
    for cell in nb.cells:  # cells we do not run keep no stale output
        if cell.cell_type == 'code' and skipped(cell): cell.outputs = []
    start = time.time()
    shell = CaptureShell(path)
    cwd = os.getcwd(); os.chdir(path.parent)
    try: shell.run_all(nb, exc_stop=True, preproc=skipped)
    finally: os.chdir(cwd)
    drop_clear_lines(nb)
    write_nb(nb, path)
    print(f'{path}: ran in {time.time() - start:.0f}s')

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('notebooks', nargs='+', type=Path)
    ap.add_argument('--skip', nargs='*', default=['gpu'])
    ap.add_argument('--tidy', action='store_true', help='only remove clear-line codes from the saved outputs; run nothing')
    args = ap.parse_args()
    if args.tidy:
        for p in args.notebooks:
            nb = read_nb(p); drop_clear_lines(nb); write_nb(nb, p)
        sys.exit(0)
    os.environ.pop('IN_TEST', None)
    for p in args.notebooks: run(p.resolve(), set(args.skip))
