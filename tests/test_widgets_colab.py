"""Colab's widgets: every widget notebook run top to bottom under ipywidgets 7.7.1 (what Colab ships), widget cells included.

Colab has its own widget front-end and breaks on ipywidgets 8, so the kit may use only what 7.7.1 has. `make test` makes
.venv-colab: a venv that sees the main .venv's packages (a .pth file) with ipywidgets 7.7.1 installed over them. Each
notebook runs with execnb under IN_TEST=1, the `#| eval: false` widget cells too; then every control of every widget is
moved in Python and what it prints must be the function's own answer for the new setting. The test also checks that
installing vlprompt into that environment would leave ipywidgets 7.7.1 alone.
Without .venv-colab the test skips (fails under CI=true). `python tests/test_widgets_colab.py run NB.ipynb` runs one notebook."""
from __future__ import annotations
import contextlib, io, json, os, re, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLAB_PYTHON = Path(os.environ.get('VLPROMPT_COLAB_PYTHON') or ROOT / '.venv-colab' / 'bin' / 'python')
COLAB_IPYWIDGETS = '7.7.1'
NOTEBOOKS = ['11_coop.ipynb', '12_prograd.ipynb', '13_taskres.ipynb', '14_maple.ipynb', '15_vpt_spt.ipynb',
             '16_kgcoop.ipynb', '17_promptsrc.ipynb', '18_linear_heads.ipynb', '19_clip_lora.ipynb']

def directives(source: str) -> dict:
    return {w[0].rstrip(':'): w[1:] for w in (l[2:].split() for l in source.splitlines() if l.startswith('#|')) if w}

def printed(buf: io.StringIO) -> str:
    "The last block an explorer printed (clear_output writes an escape sequence when no front-end is attached)."
    block = re.split(r'\x1b\[2K\r?', buf.getvalue())[-1]
    return '\n'.join(l for l in block.strip().splitlines() if not l.startswith('<Figure size'))  # a figure's repr, without a front-end

def other_value(control):
    "A setting of `control` other than its current one: the next position (or the previous one at the end)."
    from vlprompt.widgets import positions
    if type(control).__name__ == 'FloatSlider':
        up = control.value + control.step
        return up if up <= control.max + 1e-12 else control.value - control.step
    values = positions(control); i = values.index(control.value)
    return values[i + 1] if i + 1 < len(values) else values[i - 1]

def run_notebook(nb_path: Path) -> list[str]:
    "Run a notebook with execnb (widget cells included), then move each widget's controls; returns a line per move. Raises on any mismatch."
    import ipywidgets
    assert ipywidgets.__version__ == os.environ.get('VLPROMPT_EXPECT_IPYWIDGETS', ipywidgets.__version__), ipywidgets.__version__
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    import vlprompt.widgets
    made, current = [], [None]
    original = vlprompt.widgets.explorer
    def recording(run, fmt, *args, **kwargs):  # the notebooks import explorer from vlprompt.widgets: record what each cell builds
        box = original(run, fmt, *args, **kwargs)
        made.append(dict(cell=current[0], box=box, run=run, fmt=fmt))
        return box
    vlprompt.widgets.explorer = recording
    nb = read_nb(nb_path)
    shell = CaptureShell(nb_path)
    os.chdir(nb_path.parent)
    widget_cells = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != 'code' or {'slow', 'gpu'} & directives(cell.source).keys(): continue
        if directives(cell.source).get('eval', [''])[0].lower() == 'false' and 'explorer(' in cell.source: widget_cells.append(i)
        current[0] = i
        shell.run(cell.source)
        if shell.exc: raise RuntimeError(f'{nb_path.name} cell {i} failed:\n{cell.source[:500]}') from shell.exc
    lines = []
    widgets = [w for w in made if w['cell'] in widget_cells]
    assert {w['cell'] for w in widgets} == set(widget_cells), f'{nb_path.name}: a widget cell built no explorer'
    for k, w in enumerate(widgets):
        controls = [c for c in w['box'].children if hasattr(c, 'description') and c.description]
        for control in controls:
            new = other_value(control)
            buf = io.StringIO()
            start = time.time()
            with contextlib.redirect_stdout(buf): control.value = new
            seconds = time.time() - start
            settings = {c.description: c.value for c in controls}
            assert settings[control.description] == new
            fresh = w['fmt'].format(**w['run'](**settings)).strip()  # the function itself, past the explorer's memory
            shown = printed(buf)
            assert shown == fresh, f'{nb_path.name} widget {k}, {control.description} = {new!r}:\n shows {shown!r}\n  want {fresh!r}'
            lines.append(f'{nb_path.stem} {type(control).__name__} {control.description} -> {new!r}: {seconds:.2f}s  {shown.splitlines()[0]}')
    return lines

# ---- the tests (run by the main environment's pytest) ----
import pytest

def colab_python() -> Path:
    if not COLAB_PYTHON.exists():
        reason = f'no {COLAB_PYTHON} (`make test` makes it: a venv over .venv with ipywidgets=={COLAB_IPYWIDGETS})'
        if os.environ.get('CI') == 'true': pytest.fail(reason)
        pytest.skip(reason)
    return COLAB_PYTHON

def colab_env() -> dict:
    return dict(os.environ, IN_TEST='1', OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', MPLBACKEND='Agg',
                PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p]),
                VLPROMPT_EXPECT_IPYWIDGETS=COLAB_IPYWIDGETS)

def test_colab_venv_has_ipywidgets_7():
    out = subprocess.run([str(colab_python()), '-c', 'import ipywidgets, vlprompt.widgets; print(ipywidgets.__version__, ipywidgets.__file__)'],
                         env=colab_env(), capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == COLAB_IPYWIDGETS, out.stdout

def test_installing_vlprompt_keeps_colab_ipywidgets():
    "pip, asked to install vlprompt where ipywidgets 7.7.1 is, would install vlprompt alone (no index: nothing is fetched)."
    from configparser import ConfigParser
    from packaging.requirements import Requirement
    cfg = ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    req = next(Requirement(r) for r in cfg['DEFAULT']['requirements'].split() if r.startswith('ipywidgets'))
    assert req.specifier.contains(COLAB_IPYWIDGETS), f'{req} does not allow Colab\'s ipywidgets {COLAB_IPYWIDGETS}'
    out = subprocess.run([str(colab_python()), '-m', 'pip', 'install', '--dry-run', '--no-index', '--no-build-isolation', '--no-cache-dir',
                          '--report', '-', '--quiet', str(ROOT)], env=colab_env(), capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    names = [i['metadata']['name'].lower() for i in json.loads(out.stdout)['install']]
    assert names == ['vlprompt'], f'installing vlprompt would also install {names}'

def test_widget_notebooks_under_ipywidgets_7():
    "Each widget notebook top to bottom in .venv-colab (two at a time), widget cells included, every control moved."
    python, procs, lines = colab_python(), {}, []
    pending = list(NOTEBOOKS)
    while pending or procs:
        while pending and len(procs) < 2:
            nb = pending.pop(0)
            procs[nb] = subprocess.Popen([str(python), __file__, 'run', str(ROOT / 'nbs' / nb)], env=colab_env(), cwd=ROOT,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        for nb, p in list(procs.items()):
            if p.poll() is None: continue
            out = p.stdout.read(); del procs[nb]
            assert p.returncode == 0, f'{nb} under ipywidgets {COLAB_IPYWIDGETS}:\n{out[-4000:]}'
            lines += [l for l in out.splitlines() if l.startswith(nb.removesuffix('.ipynb'))]
    print('\n'.join([''] + lines))
    assert len(lines) >= 13, lines  # 2 + 1 + 2 + 2 + 3 + 1 + 3 controls

if __name__ == '__main__' and sys.argv[1:2] == ['run']:
    for line in run_notebook(Path(sys.argv[2]).resolve()): print(line, flush=True)
