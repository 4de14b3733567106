"The `vlprompt` command as a user runs it, and the package without the dev tools."
import json, os, shutil, subprocess, sys, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
VLPROMPT = str(Path(sys.executable).parent/'vlprompt')

def run(*args, **kw):
    env = {**os.environ, 'HF_HUB_OFFLINE': '1'}
    return subprocess.run([VLPROMPT, *args], capture_output=True, text=True, env=env, **kw)

def test_demo_prints_the_zeroshot_and_base_to_new_tables(tmp_path):
    res = run('demo', '--out', str(tmp_path/'demo'))
    assert res.returncode == 0, res.stderr
    assert '| micro-pairs | 64 |' in res.stdout and 'micro-pairs-sketch' in res.stdout
    result = json.loads((tmp_path/'demo'/'demo.json').read_text())
    pairs = next(r for r in result['zeroshot'] if r['task'] == 'micro-pairs')
    assert pairs['template_mean'] >= 85
    b2n = {r['method']: r for r in result['base2new']}
    from vlprompt.cli import DEMO_METHODS
    assert set(b2n) == set(DEMO_METHODS) >= {'zeroshot', 'coop', 'cocoop', 'prograd', 'taskres', 'maple'}
    assert all(f'| micro-pairs | {m} | 1 |' in res.stdout for m in DEMO_METHODS)
    assert all(abs(r['hm'] - 2 * r['base'] * r['new'] / (r['base'] + r['new'])) < 1e-6 for r in b2n.values())
    assert b2n['taskres']['base'] > b2n['zeroshot']['base']  # TaskRes improves the trained classes
    assert b2n['taskres']['new'] == b2n['zeroshot']['new']  # and leaves unseen classes zero-shot (no residual for them)
    assert b2n['coop']['base'] > b2n['zeroshot']['base']  # 16-shot CoOp improves the trained classes
    assert (tmp_path/'demo'/'demo.png').stat().st_size > 1000

def test_help_and_unknown_command():
    res = run('--help')
    assert res.returncode == 0 and 'demo' in res.stdout
    res = run('nonsense')
    assert res.returncode == 2 and 'invalid choice' in res.stderr

def test_wheel_works_without_the_dev_tools(tmp_path):
    "`pip install .` ships the modules and the micro checkpoint, and importing needs no nbdev or fastcore."
    res = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp_path), str(ROOT)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    wheel = next(tmp_path.glob('vlprompt-*.whl'))
    names = zipfile.ZipFile(wheel).namelist()
    assert 'vlprompt/assets/micro_clip.pt' in names and 'vlprompt/clip.py' in names
    site = tmp_path/'site'; zipfile.ZipFile(wheel).extractall(site)
    code = ("import sys; sys.modules['nbdev'] = sys.modules['fastcore'] = sys.modules['execnb'] = None\n"
            "import vlprompt.clip, vlprompt.micro, vlprompt.cli\n"
            "assert vlprompt.clip.__file__.startswith(sys.argv[1]), vlprompt.clip.__file__\n"
            "clip = vlprompt.clip.load_clip('micro', device='cpu'); print('ok', clip.name)")
    res = subprocess.run([sys.executable, '-c', code, str(site)], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, 'PYTHONPATH': str(site)})
    assert res.returncode == 0 and 'ok micro' in res.stdout, res.stderr
