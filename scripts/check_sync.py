"""Fail when `vlprompt/` is out of sync with `nbs/` or a notebook is not clean.

Runs `nbdev_export` and `nbdev_clean` and compares the files before and after: a change means
the committed library or notebooks were stale. The tools' fixes are left in place for you to commit."""
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

def snapshot():
    files = list((ROOT/'vlprompt').rglob('*.py')) + list((ROOT/'nbs').rglob('*.ipynb'))
    return {p.relative_to(ROOT): p.read_bytes() for p in files if '.ipynb_checkpoints' not in p.parts}

def main():
    before = snapshot()
    for tool in ('nbdev_export', 'nbdev_clean'):
        subprocess.run([str(BIN/tool)], cwd=ROOT, check=True)
    after = snapshot()
    changed = sorted(str(p) for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if changed:
        print('Out of sync: nbdev_export / nbdev_clean changed these files:\n  ' + '\n  '.join(changed))
        print('Edit the notebooks in nbs/, run `make export`, and commit both nbs/ and vlprompt/.')
        sys.exit(1)
    print(f'vlprompt/ matches nbs/ and all {sum(1 for p in after if p.suffix == ".ipynb")} notebooks are clean.')

if __name__ == '__main__': main()
