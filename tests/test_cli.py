"The `vlprompt` command as a user runs it, and the package without the dev tools."
import json, os, shutil, subprocess, sys, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
VLPROMPT = str(Path(sys.executable).parent/'vlprompt')

def run(*args, **kw):
    env = {**os.environ, 'HF_HUB_OFFLINE': '1'}
    return subprocess.run([VLPROMPT, *args], capture_output=True, text=True, env=env, **kw)

NO_NETWORK = r'''
import json, socket, sys, atexit
attempts, real_connect, real_connect_ex = [], socket.socket.connect, socket.socket.connect_ex
def guarded(real):
    def connect(sock, address, *a):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(repr(address)); raise OSError(f'network access blocked by the test: {address!r}')
        return real(sock, address, *a)
    return connect
socket.socket.connect, socket.socket.connect_ex = guarded(real_connect), guarded(real_connect_ex)
def no_lookup(host, *a, **k):
    attempts.append(f'lookup {host!r}'); raise socket.gaierror(f'name lookup blocked by the test: {host!r}')
socket.getaddrinfo = no_lookup
atexit.register(lambda: open(sys.argv[1], 'w').write(json.dumps(attempts)))
from vlprompt.cli import main
main(sys.argv[2:])
'''

def test_demo_prints_the_zeroshot_and_base_to_new_tables(tmp_path):
    "The demo, with every network connection and name lookup of the process refused: it needs none."
    attempts = tmp_path/'attempts.json'
    env = {k: v for k, v in os.environ.items() if k not in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE')}  # no offline flags to hide behind
    res = subprocess.run([sys.executable, '-c', NO_NETWORK, str(attempts), 'demo', '--out', str(tmp_path/'demo')],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(attempts.read_text()) == []  # not one connection or lookup was tried
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
