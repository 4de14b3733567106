"""The bad-input battery: every mistake a student makes at the command line gets one paragraph that names the bad value and the
fix, a non-zero exit, and nothing of theirs written over. Then damaged files, interruption, determinism."""
import hashlib, json, os, random, shutil, signal, subprocess, sys, time, warnings
from pathlib import Path
import pytest, torch

VLPROMPT = str(Path(sys.executable).parent/'vlprompt')
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1'}
ENV.pop('VLPROMPT_DATA', None)

def cli(*args, env=None, **kw):
    return subprocess.run([VLPROMPT, *map(str, args)], capture_output=True, text=True, env={**ENV, **(env or {})}, **kw)

def tree(folder: Path) -> dict:
    "Every file under `folder` with a hash of its bytes (what 'nothing written over' compares)."
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*')) if p.is_file()}

def refused(res, *must_say):
    "One short paragraph on stderr, exit status 2, no traceback, naming what it must."
    assert res.returncode == 2, (res.returncode, res.stdout[-500:], res.stderr[-2000:])
    message = res.stderr.strip().splitlines()[-1]
    assert 'Traceback' not in res.stderr and message.startswith('vlprompt '), res.stderr[-2000:]
    for words in must_say: assert words in message, (words, message)
    return message

@pytest.fixture(scope='module')
def pets(tmp_path_factory):
    "A fake Oxford Pets in CoOp's layout (3 classes, 6/3/4 images per class), as a data root."
    from vlprompt.data import make_fake_dataset
    root = tmp_path_factory.mktemp('data')
    make_fake_dataset('oxford_pets', root, n_classes=3, per_class=(6, 3, 4), size=40)
    return root

MICRO = ['--dataset', 'micro-pairs', '--protocol', 'base2new']

@pytest.mark.parametrize('args,must_say', [
    (['--method', 'cop', *MICRO], ["'cop'", "Did you mean 'coop'"]),
    (['--method', 'coop', '--dataset', 'micro-pair'], ["'micro-pair'", 'micro-pairs']),
    (['--method', 'prograd', *MICRO, '--set', 'lam=1.5'], ['lambda must be in [0, 1]', '1.5']),
    (['--method', 'taskres', *MICRO, '--set', 'alpha=-1'], ['alpha', '>= 0', '-1']),
    (['--method', 'maple', *MICRO, '--set', 'depth=7'], ['depth J must be between 1 and 4', '7']),
    (['--method', 'coop', *MICRO, '--set', 'n_ctx=40', 'ctx_init=null'], ['n_ctx=40', 'shorten the prompt length']),
    (['--method', 'coop', *MICRO, '--set', 'n_ctx=8'], ['n_ctx=8', "'a photo of a' is 4 words", 'ctx_init=None']),
    (['--method', 'coop', *MICRO, '--set', 'epoch=3'], ["'epoch'", "Did you mean 'epochs'"]),
    (['--method', 'coop', *MICRO, '--set', 'lr=-1'], ['lr must be a positive number', '-1']),
    (['--method', 'coop', *MICRO, '--set', 'lamda'], ['KEY=VALUE', "'lamda'"]),
    (['--method', 'coop', *MICRO, '--shots', '0'], ['shots must be at least 1', '0']),
    (['--method', 'coop', *MICRO, '--backbone', 'ViT-B-61'], ["'ViT-B-61'", "Did you mean 'ViT-B-16'"]),
    (['--method', 'coop', *MICRO, '--backbone', 'ViT-B-16', '--pretrained', 'opena'], ["'opena'", "Did you mean 'openai'"]),
    (['--method', 'coop', '--dataset', 'oxford_pets'], ['No data root given', 'VLPROMPT_DATA']),
])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, args, must_say):
    out = tmp_path/'run'
    refused(cli('train', *args, '--out', out), *must_say)
    assert not out.exists(), sorted(tree(out))  # not even a config.json: nothing to clean up, nothing half made

def test_offline_download_says_how_to_get_the_weights(tmp_path):
    refused(cli('train', '--method', 'coop', *MICRO, '--backbone', 'ViT-B-16', '--pretrained', 'openai', '--out', tmp_path/'run'),
            'ViT-B-16/openai', 'offline', 'checkpoint=')
    assert not (tmp_path/'run').exists()

def test_missing_and_damaged_data_files(tmp_path, pets):
    root = tmp_path/'data'; shutil.copytree(pets, root)
    args = ['train', '--method', 'zeroshot', '--dataset', 'oxford_pets', '--data-root', root, '--out', tmp_path/'run']
    refused(cli(*args[:-4], '--data-root', tmp_path/'nowhere', '--out', tmp_path/'run'), 'nowhere')
    split = root/'oxford_pets'/'split_zhou_OxfordPets.json'
    good = json.loads(split.read_text())
    split.unlink()
    refused(cli(*args), 'split_zhou_OxfordPets.json', 'DATASETS.md')
    split.write_text(json.dumps({**good, 'test': [['x.jpg', 'one', 'cat']]}))
    refused(cli(*args), 'should be [relative image path, integer label, class name]')
    split.write_text(json.dumps({**good, 'test': good['test'] + [[good['test'][0][0], 7, 'cat']]}))
    refused(cli(*args), 'label 7', 'out of range')
    assert not (tmp_path/'run').exists()

def test_more_shots_than_any_class_has_is_refused_and_says_how_many(tmp_path, pets):
    "16 shots where every class has 6 would be the whole train split under a folder named shots16: refused (issue 24)."
    res = cli('train', '--method', 'zeroshot', '--dataset', 'oxford_pets', '--data-root', pets, '--shots', 16, '--out', tmp_path/'run')
    refused(res, '--shots 16', 'the largest has 6', '--shots 6 or fewer')
    assert not (tmp_path/'run').exists()

def test_a_finished_run_is_not_overwritten_and_a_foreign_checkpoint_is_refused(tmp_path):
    a = tmp_path/'coop'
    assert cli('train', '--method', 'coop', *MICRO, '--set', 'epochs=2', '--out', a).returncode == 0
    before = tree(a)
    refused(cli('train', '--method', 'coop', *MICRO, '--set', 'epochs=2', '--out', a), 'already holds a finished run', '--overwrite')
    refused(cli('train', '--method', 'coop', *MICRO, '--set', 'epochs=3', '--out', a), 'already holds a finished run')
    assert tree(a) == before
    b = tmp_path/'taskres'; b.mkdir(); shutil.copy(a/'checkpoint.pt', b/'checkpoint.pt')  # someone else's checkpoint
    refused(cli('train', '--method', 'taskres', *MICRO, '--set', 'epochs=2', '--out', b), "belongs to method 'CoOp', not 'TaskRes'")
    assert (b/'checkpoint.pt').read_bytes() == (a/'checkpoint.pt').read_bytes()  # refused, and left as it was

def test_nan_loss_stops_with_the_step_and_the_cause(tmp_path):
    msg = refused(cli('train', '--method', 'coop', *MICRO, '--set', 'lr=1e38', 'epochs=2', '--out', tmp_path/'run'), 'The loss became nan', 'step')
    assert 'learning rate' in msg
    assert not (tmp_path/'run'/'metrics.json').exists()

def test_damaged_checkpoint_and_feature_cache_are_rebuilt_not_trusted(tmp_path):
    args = ['train', '--method', 'coop', *MICRO, '--set', 'epochs=2', '--cache', tmp_path/'cache']
    res = cli(*args, '--out', tmp_path/'clean'); assert res.returncode == 0, res.stderr[-2000:]
    clean = json.loads((tmp_path/'clean'/'metrics.json').read_text())
    run = tmp_path/'damaged'; shutil.copytree(tmp_path/'clean', run); (run/'metrics.json').unlink()
    ckpt = (run/'checkpoint.pt').read_bytes(); (run/'checkpoint.pt').write_bytes(ckpt[:len(ckpt) // 3])  # a truncated checkpoint
    cached = sorted((tmp_path/'cache'/'features').glob('*.pt'))
    cached[0].write_bytes(cached[0].read_bytes()[:100])  # and a truncated feature file
    res = cli(*args, '--out', run)
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'moved it to checkpoint.pt.damaged-' in res.stderr and 'rebuilding it' in res.stderr
    again = json.loads((run/'metrics.json').read_text())
    assert (again['base'], again['new'], again['hm']) == (clean['base'], clean['new'], clean['hm'])
    assert len(list(run.glob('checkpoint.pt.damaged-*'))) == 1  # kept for inspection, not deleted

def test_same_seed_same_metrics_other_seed_other_shots(tmp_path):
    "Determinism on a CPU: the same settings and seed give identical metrics in two processes; another seed draws other shots."
    runs = {}
    for name, seed in (('a', 1), ('b', 1), ('c', 2)):
        res = cli('train', '--method', 'coop', *MICRO, '--seed', seed, '--set', 'epochs=2', '--out', tmp_path/name)
        assert res.returncode == 0, res.stderr[-2000:]
        runs[name] = json.loads((tmp_path/name/'metrics.json').read_text())
    assert {k: runs['a'][k] for k in ('base', 'new', 'hm')} == {k: runs['b'][k] for k in ('base', 'new', 'hm')}
    shots = {n: json.loads(next((tmp_path/n/'cache'/'fewshot').rglob('*.json')).read_text()) for n in ('a', 'b', 'c')}
    assert shots['a'] == shots['b'] and shots['a'] != shots['c']

def readable(path: Path):
    "Load a file the kit wrote, the way the kit reads it (raises if it is partial)."
    if path.suffix == '.json': return json.loads(path.read_text())
    if path.suffix == '.pt': return torch.load(path, map_location='cpu', weights_only=True)
    return path.read_bytes()

def epochs_in(run) -> int:
    "Epochs a run folder's checkpoint holds (0 without one, or while it is being replaced)."
    try: return torch.load(run/'checkpoint.pt', weights_only=True)['epoch'] + 1
    except Exception: return 0

def test_kill_at_20_random_points_then_resume_gives_the_uninterrupted_metrics(tmp_path):
    """SIGKILL `vlprompt train` at 20 random moments in a row (start-up, feature caching, epochs, checkpoint writes); after each,
    every file is whole; resuming then finishes with exactly the metrics of a run never interrupted."""
    epochs = 200  # resumed attempts start faster than the first (features cached): enough epochs that 20 kills land
    args = ['train', '--method', 'coop', *MICRO, '--seed', 3, '--set', f'epochs={epochs}']
    t = time.time(); res = cli('train', '--method', 'zeroshot', *MICRO, '--out', tmp_path/'startup'); startup = time.time() - t
    assert res.returncode == 0, res.stderr[-2000:]
    t = time.time(); res = cli(*args, '--out', tmp_path/'straight'); duration = time.time() - t
    assert res.returncode == 0, res.stderr[-2000:]
    straight = json.loads((tmp_path/'straight'/'metrics.json').read_text())
    epoch = max(duration - startup, 0.5) / epochs
    run, rng, kills = tmp_path/'killed', random.Random(0), 0
    while kills < 20 and not (run/'metrics.json').exists():
        proc = subprocess.Popen([VLPROMPT, *map(str, args), '--out', str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        # from start-up to the first epochs of this attempt; the timings above are rough on a busy
        # machine, so an attempt is also killed once only 2 epochs per kill still to come are left
        deadline = time.time() + rng.uniform(0.3 * startup, startup + 1.5 * epoch)
        limit = epochs - 2 * (20 - kills)
        while proc.poll() is None and time.time() < deadline and epochs_in(run) < limit:
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL); kills += 1
        proc.wait()
        for path in run.rglob('*'):  # temporaries (.<name>.<random>.tmp) are never read: every real file is whole
            if path.is_file() and not path.name.endswith('.tmp'): readable(path)
    epochs_done = torch.load(run/'checkpoint.pt', weights_only=True)['epoch'] + 1 if (run/'checkpoint.pt').exists() else 0
    res = cli(*args, '--out', run)
    assert res.returncode == 0 or 'already holds a finished run' in res.stderr, res.stderr[-2000:]
    resumed = json.loads((run/'metrics.json').read_text())
    assert kills == 20, f'only {kills} kills landed before the run finished'
    print(f'20 kills; {epochs_done} of {epochs} epochs were done when the last one landed')
    assert (resumed['base'], resumed['new'], resumed['hm']) == (straight['base'], straight['new'], straight['hm'])

def test_no_eval_or_exec_and_every_torch_load_is_weights_only():
    "Safety, read off the library's source: no eval/exec of strings, and every torch.load passes weights_only=True."
    import ast
    lib = Path(__file__).resolve().parents[1]/'vlprompt'
    loads = 0
    for path in lib.rglob('*.py'):
        tree_ = ast.parse(path.read_text())
        allowed = {id(n) for fn in ast.walk(tree_) if isinstance(fn, ast.FunctionDef) and fn.name == 'notebook_module' for n in ast.walk(fn)}
        for node in ast.walk(tree_):
            if not isinstance(node, ast.Call): continue
            f = node.func
            if isinstance(f, ast.Name) and f.id in ('eval', 'exec'):  # only grading runs code: a notebook's cells, which is what it is for
                assert path.name == 'classroom.py' and id(node) in allowed, f'{path.name}:{node.lineno} calls {f.id}'
            if isinstance(f, ast.Attribute) and f.attr == 'load' and isinstance(f.value, ast.Name) and f.value.id == 'torch':
                loads += 1
                kw = {k.arg: k.value for k in node.keywords}
                assert isinstance(kw.get('weights_only'), ast.Constant) and kw['weights_only'].value is True, f'{path.name}:{node.lineno}'
    assert loads >= 4  # checkpoints, feature caches, the micro CLIP, bench's checkpoint check

def test_a_second_writer_of_a_run_folder_is_refused_and_a_killed_one_leaves_no_lock(tmp_path, another_writer):
    out = tmp_path/'run'
    args = ['train', '--method', 'coop', *MICRO, '--set', 'epochs=2', '--out', out]
    other = another_writer(out)
    before = tree(out)
    refused(cli(*args), str(out), 'being written by another process', f'pid {other.pid}', 'Wait for it to finish')
    assert tree(out) == before, 'the refused run wrote into the busy folder'
    other.kill(); other.wait()  # as by kill -9: the operating system drops its lock
    res = cli(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert 55 < json.loads((out/'metrics.json').read_text())['base'] < 100
    other = another_writer(out)  # a finished run that another process is writing again: --overwrite must not delete under it
    before = tree(out)
    refused(cli(*args, '--overwrite'), 'being written by another process', f'pid {other.pid}')
    assert tree(out) == before

def test_a_folder_that_cannot_be_written_is_one_sentence(tmp_path, monkeypatch, capsys):
    from vlprompt import cli as vcli, train
    def denied(path, *a, **k): raise PermissionError(13, 'Permission denied', str(path))
    monkeypatch.setattr(train.os, 'open', denied)  # as a read-only folder would (this test may run as root, who may write anywhere)
    with pytest.raises(SystemExit) as stop:
        vcli.main(['train', '--method', 'coop', *MICRO, '--set', 'epochs=1', '--out', str(tmp_path/'run')])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err and 'cannot write' in err and str(tmp_path/'run') in err and 'another --out' in err, err
