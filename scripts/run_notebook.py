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
    write_nb(nb, path)
    print(f'{path}: ran in {time.time() - start:.0f}s')

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('notebooks', nargs='+', type=Path)
    ap.add_argument('--skip', nargs='*', default=['gpu'])
    args = ap.parse_args()
    os.environ.pop('IN_TEST', None)
    for p in args.notebooks: run(p.resolve(), set(args.skip))
