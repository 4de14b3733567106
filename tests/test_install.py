"""A student's plain install (issue 24): the kit's wheel in a clean virtual environment (no system
site packages, not .venv) with only its runtime requirements, a Jupyter kernel and a notebook
runner. A method notebook and a solved student notebook from `vlprompt exercises` then run there
(IN_TEST=1) from a folder outside the repository, so nothing of the checkout is importable. Any
cell that raises (a dev-only import such as nbdev, a path into the repository) fails the test."""
import json, os, shutil, subprocess, sys, time
from pathlib import Path
import pytest

from test_classroom import _splice_solutions
from vlprompt import classroom

ROOT = Path(__file__).resolve().parents[1]
METHOD_NOTEBOOK = '10_zeroshot.ipynb'  # the fastest method notebook under IN_TEST
EXERCISE = 'prompt_assembly'  # its student notebook is 11_coop.ipynb
KERNEL = ['ipykernel', 'nbclient']  # a Jupyter kernel and a notebook runner: all a student adds

# runs in the clean venv: a notebook through a real kernel; its first cell says where vlprompt is
RUNNER = '''import json, sys, nbformat
from nbclient import NotebookClient
path, out = sys.argv[1:]
nb = nbformat.read(path, as_version=4)
where = "import sys, vlprompt; print(sys.prefix); print(vlprompt.__file__)"
nb.cells.insert(0, nbformat.v4.new_code_cell(where))
NotebookClient(nb, timeout=1200, kernel_name='python3').execute()
where = nb.cells[0].outputs[0]['text'].split()
with open(out, 'w') as f:
    json.dump(dict(prefix=where[0], vlprompt=where[1], cells=len(nb.cells) - 1), f)
'''

def _sh(*args, **kw):
    res = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    said = f'{res.stdout[-2000:]}\n{res.stderr[-4000:]}'
    assert res.returncode == 0, f'{" ".join(map(str, args))} failed ({res.returncode}):\n{said}'
    return res

def _clean_env(home: Path) -> dict:
    "A student's shell: nothing of the checkout or the dev .venv on the paths; own Jupyter folders."
    drop = ('PYTHONPATH', 'VIRTUAL_ENV', 'PYTHONHOME')
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith('JUPYTER')}
    for d in ('jupyter_data', 'jupyter_config', 'ipython'): (home/d).mkdir(exist_ok=True)
    path = [str(home/'env'/'bin')] + [p for p in env['PATH'].split(os.pathsep)
                                      if '.venv' not in p]
    jupyter = dict(JUPYTER_DATA_DIR=home/'jupyter_data', JUPYTER_PATH=home/'jupyter_data',
                   JUPYTER_CONFIG_DIR=home/'jupyter_config')
    return {**env, **{k: str(v) for k, v in jupyter.items()}, 'PYTHONNOUSERSITE': '1',
            'IPYTHONDIR': str(home/'ipython'), 'IN_TEST': '1', 'OMP_NUM_THREADS': '1',
            'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'PATH': os.pathsep.join(path)}

def _runnable(nb: dict) -> dict:
    "The notebook as nbdev_test runs it: cells marked `eval: false`, `gpu` or `slow` left out."
    sys.path.insert(0, str(ROOT/'scripts'))
    from run_notebook import directives
    def skipped(cell):
        d = directives(classroom._source(cell))
        off = d.get('eval', [''])[0].lower() == 'false' or bool({'gpu', 'slow'} & d.keys())
        return cell['cell_type'] == 'code' and off
    return {**nb, 'cells': [c for c in nb['cells'] if not skipped(c)]}

@pytest.fixture(scope='module')
def student(tmp_path_factory):
    "A clean venv with the wheel installed (and the seconds each step took), and a work folder."
    home, took = tmp_path_factory.mktemp('student'), {}
    if shutil.which('git') is None:
        pytest.skip('git is missing: the wheel is built from the files git tracks (git ls-files)')
    t = time.time()
    src = home/'src'  # the files a clone has (no build/ or egg-info left in the repository)
    listed = _sh('git', 'ls-files', '--cached', '--others', '--exclude-standard', cwd=ROOT).stdout
    for f in filter(None, listed.split('\n')):
        if (ROOT/f).is_file() and not f.startswith(('nbs/', 'tests/')):
            (src/f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT/f, src/f)
    _sh(sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
        '-w', home/'dist', src)
    wheel = next((home/'dist').glob('vlprompt-*.whl'))
    took['wheel'] = time.time() - t; t = time.time()
    env = _clean_env(home)
    _sh(sys.executable, '-m', 'venv', '--clear', home/'env', env=env)  # no system site packages
    assert 'include-system-site-packages = false' in (home/'env'/'pyvenv.cfg').read_text()
    _sh(home/'env'/'bin'/'python', '-m', 'pip', 'install', '-q', '--no-compile',
        '--disable-pip-version-check', wheel, *KERNEL, env=env)  # Python compiles what is imported
    took['install'] = time.time() - t
    (home/'work').mkdir()
    (home/'run_notebook.py').write_text(RUNNER)
    yield dict(home=home, env=env, took=took)
    # ~6 GB with torch's CUDA wheels: not kept among pytest's temp folders, deleted in the background
    subprocess.Popen(['rm', '-rf', str(home/'env')], start_new_session=True)

def _run(student, nb: dict, name: str) -> dict:
    "Run `nb` in the clean venv's kernel from the work folder; where vlprompt was imported from."
    home, work = student['home'], student['home']/'work'
    (work/name).write_text(json.dumps(_runnable(nb), indent=1))
    t = time.time()
    res = subprocess.run([home/'env'/'bin'/'python', home/'run_notebook.py', work/name,
                          home/f'{name}.json'], capture_output=True, text=True, cwd=work,
                         env=student['env'])
    assert res.returncode == 0, f'{name} failed in the clean install:\n{res.stderr[-6000:]}'
    student['took'][name] = time.time() - t
    print('clean install, seconds:', json.dumps({k: round(v) for k, v in student['took'].items()}))
    where = json.loads((home/f'{name}.json').read_text())
    env = (home/'env').resolve()
    assert Path(where['prefix']).resolve() == env, where  # the kernel is the clean venv's python
    assert Path(where['vlprompt']).resolve().is_relative_to(env), where  # the wheel, not the repo
    return where

def test_a_method_notebook_runs_after_a_plain_install(student):
    where = _run(student, classroom.read_notebook(ROOT/'nbs'/METHOD_NOTEBOOK), METHOD_NOTEBOOK)
    assert where['cells'] > 10

def test_a_student_notebook_runs_after_a_plain_install(student):
    "`vlprompt exercises` of the installed kit writes it; solved with the kit's lines, it runs."
    home = student['home']
    _sh(home/'env'/'bin'/'vlprompt', 'exercises', '--out', home/'lab', '--nbs', ROOT/'nbs',
        '--only', EXERCISE, env=student['env'], cwd=home/'work')
    notebook = classroom.get_exercise(EXERCISE).notebook
    written = classroom.read_notebook(home/'lab'/notebook)
    assert classroom.notebook_exercises(written) == [EXERCISE]  # its stub and its check cell
    solved = _splice_solutions(written, classroom.read_notebook(ROOT/'nbs'/notebook))
    assert any('import check_' in classroom._source(c) for c in solved['cells'])
    _run(student, solved, f'student_{notebook}')
