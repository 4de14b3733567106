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
    assert 40 <= pairs['template_mean'] <= 80  # room to learn (issue 20)
    b2n = {r['method']: r for r in result['base2new']}
    from vlprompt.cli import demo_methods
    assert set(b2n) == set(demo_methods()) >= {'zeroshot', 'coop', 'cocoop', 'prograd', 'taskres',
                                                'maple'}
    assert all(f'| micro-pairs | {m} | 1 |' in res.stdout for m in demo_methods())
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

def test_import_checkpoint_evaluates_an_official_checkpoint(tmp_path):
    "An official CoOp checkpoint (Dassl's layout, a scheduler object pickled beside it) holding 'a photo of a' scores as zero-shot."
    import torch
    import vlprompt.micro  # registers the 'micro' CLIP
    from vlprompt.clip import load_clip
    clip = load_clip('micro', device='cpu')
    words = clip.model.token_embedding(clip.tokenizer(['a photo of a'])[0, 1:5]).detach()
    ckpt = tmp_path/'prompt_learner'/'model.pth.tar-200'
    ckpt.parent.mkdir()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.), 10)
    torch.save({'state_dict': {'ctx': words, 'token_prefix': torch.zeros(3)}, 'epoch': 200, 'scheduler': {'successor': sched}}, ckpt)
    args = ['import-checkpoint', '--official', str(ckpt), '--method', 'coop', '--dataset', 'micro-pairs']
    res = run(*args, '--out', str(tmp_path/'out'))
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads((tmp_path/'out'/'metrics.json').read_text())
    from vlprompt import bench
    zs = bench.run(bench.run_settings('zeroshot', 'base2new', 'micro-pairs', 16, 1), progress=False)
    assert abs(got['base'] - zs['base']) < 1e-6 and abs(got['new'] - zs['new']) < 1e-6
    assert got['official_checkpoint']['file'] == str(ckpt)
    again = run(*args, '--out', str(tmp_path/'out'))  # never overwrites
    assert again.returncode == 2 and 'already holds' in again.stderr
    (tmp_path/'bad.pt').write_bytes(b'not a checkpoint')
    bad = run('import-checkpoint', '--official', str(tmp_path/'bad.pt'), '--method', 'coop', '--dataset', 'micro-pairs')
    assert bad.returncode == 2 and 'not a readable checkpoint' in bad.stderr and 'Traceback' not in bad.stderr
    wrong = run('import-checkpoint', '--official', str(ckpt), '--method', 'cocoop', '--dataset', 'micro-pairs')
    assert wrong.returncode == 2 and 'No value for' in wrong.stderr, wrong.stderr
