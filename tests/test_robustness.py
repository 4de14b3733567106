"""Round 2 of the bad-input battery (issue 24): --overwrite loses nothing, settings are typed, the weights file is part of
a run's identity, paths / devices / datasets are checked before anything is written, duplicates in a table are named,
output files follow the umask, `vlprompt --help` needs no torch, and a property test of random --set pairs and paths."""
import contextlib, hashlib, io, json, os, shutil, subprocess, sys, time
from pathlib import Path
import pytest, torch

from test_bad_input import MICRO, cli, refused, ENV, VLPROMPT
from test_bad_input import tree as _tree

def tree(folder: Path) -> dict:
    "Every file under `folder` with a hash of its bytes, but the lock file (it names the last process that held it)."
    return {k: v for k, v in _tree(folder).items() if k != '.lock'}

def main(*args):
    "`vlprompt ARGS` in this process (torch loaded once): exit status, stdout, stderr."
    from vlprompt import cli as vcli
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: vcli.main([str(a) for a in args]); code = 0
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()

def said(res, *words):
    "Exit 2 with one line on stderr naming `words`, no traceback."
    code, _, err = res
    assert code == 2, (code, err[-2000:])
    assert 'Traceback' not in err, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith('vlprompt ') and all(w in line for w in words), (words, line)
    return line

@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    "A finished micro CoOp run (2 epochs) to try to overwrite."
    out = tmp_path_factory.mktemp('runs')/'coop'
    code, _, err = main('train', '--method', 'coop', *MICRO, '--set', 'epochs=2', '--out', out)
    assert code == 0, err[-2000:]
    return out

@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    "The shipped micro CLIP checkpoint, and a copy with one text weight changed (another backbone)."
    from vlprompt.micro import MICRO_CHECKPOINT
    d = tmp_path_factory.mktemp('weights')
    w1, w2 = d/'w1.pt', d/'w2.pt'
    shutil.copy(MICRO_CHECKPOINT, w1)
    payload = torch.load(w1, map_location='cpu', weights_only=True)
    payload['state_dict']['text_projection'] = payload['state_dict']['text_projection'].flip(0)
    torch.save(payload, w2)
    return w1, w2

# --- data loss: --overwrite validates first, keeps the old run until the new one has finished ---

@pytest.mark.parametrize('bad,words', [
    (['--backbone', 'ViT-B-61'], ["'ViT-B-61'"]),
    (['--checkpoint', 'TRUNCATED'], ['not a readable micro CLIP checkpoint']),
    (['--data-root', 'NOWHERE', '--dataset', 'oxford_pets', '--protocol', 'fewshot'], ['NOWHERE']),
    (['--set', 'epochs=20.0'], ['epochs must be a whole number']),
    (['--set', 'lam=0.5'], ["'lam'"]),
])
def test_overwrite_checks_the_new_run_before_touching_the_finished_one(finished, tmp_path, bad, words):
    truncated = tmp_path/'w.pt'; truncated.write_bytes(b'\x80\x02 not a checkpoint')
    bad = [str(truncated) if b == 'TRUNCATED' else str(tmp_path/'nowhere') if b == 'NOWHERE' else b for b in bad]
    words = [str(tmp_path/'nowhere') if w == 'NOWHERE' else w for w in words]
    args = ['train', '--method', 'coop', *MICRO, '--set', 'epochs=2', '--out', finished, '--overwrite']
    if '--dataset' in bad: args = [a for a in args if a not in MICRO] + ['--set', 'epochs=2']
    before = tree(finished)
    said(main(*args, *bad), *words)
    assert tree(finished) == before, 'a refused --overwrite changed the finished run'

def test_overwrite_that_fails_midway_puts_the_finished_run_back(finished, monkeypatch):
    from vlprompt import bench
    before = tree(finished)
    def broken(*a, **k): raise bench.VLPromptError('the new run failed half way')
    monkeypatch.setattr(bench, 'train_run', broken)  # after config.json, before metrics
    said(main('train', '--method', 'coop', *MICRO, '--set', 'epochs=3', '--out', finished, '--overwrite'), 'failed half way')
    assert tree(finished) == before and not (finished/'.replaced').exists()

def test_overwrite_that_succeeds_replaces_the_run(tmp_path, finished):
    out = tmp_path/'again'; shutil.copytree(finished, out)
    code, _, err = main('train', '--method', 'coop', *MICRO, '--set', 'epochs=3', '--out', out, '--overwrite')
    assert code == 0, err[-2000:]
    assert json.loads((out/'config.json').read_text())['train']['epochs'] == 3
    assert json.loads((out/'metrics.json').read_text())['settings']['train']['epochs'] == 3
    assert not (out/'.replaced').exists()

# --- silently wrong: typed settings, seed, shots, a backbone without weights ---

@pytest.mark.parametrize('method,pair,words', [
    ('coop', 'epochs=1.5', ['epochs must be a whole number', '1.5']),
    ('coop', 'epochs=1e9', ['epochs must be a whole number']),
    ('coop', 'epochs=1000000000', ['epochs must be between 1 and 100000']),
    ('coop', 'batch_size=2.5', ['batch_size must be a whole number']),
    ('coop', 'amp=maybe', ['amp must be true or false', "'maybe'"]),
    ('coop', 'lr=abc', ['lr must be a finite number']),
    ('coop', 'n_ctx=abc', ['n_ctx must be a whole number']),
    ('prograd', 'lam=true', ['lam must be a finite number', 'True']),
    ('prograd', 'lam=abc', ['lam must be a finite number']),
    ('prograd', 'temperature=abc', ['temperature must be a finite number']),
    ('coop', 'seed=5', ['seed is not a setting', '--seed']),
    ('taskres', 'templates=abc', ['templates must be a JSON list']),
])
def test_settings_are_typed_and_refused_before_anything_is_written(tmp_path, method, pair, words):
    out = tmp_path/'run'
    said(main('train', '--method', method, *MICRO, '--set', pair, '--out', out), *words)
    assert not out.exists()

def test_the_error_for_an_unknown_key_does_not_offer_seed(tmp_path):
    line = said(main('train', '--method', 'coop', *MICRO, '--set', 'sed=5', '--out', tmp_path/'r'), "'sed'")
    assert 'seed' not in line.split('Settings:')[1]

def test_more_shots_than_any_class_has_are_refused(tmp_path):
    said(main('train', '--method', 'zeroshot', *MICRO, '--shots', '100000', '--out', tmp_path/'r'), 'the largest has 32', '--shots 32')
    assert not (tmp_path/'r').exists()

def test_an_open_clip_backbone_without_weights_is_refused(tmp_path):
    said(main('train', '--method', 'coop', *MICRO, '--backbone', 'ViT-B-16', '--out', tmp_path/'r'), 'has no weights',
         '--pretrained', '--checkpoint')
    assert not (tmp_path/'r').exists()

# --- the weights are part of a run ---

def test_weights_fingerprint_sees_every_weight():
    from vlprompt.clip import tiny_clip
    from vlprompt.train import weights_fingerprint
    a, b = tiny_clip(), tiny_clip()
    with torch.no_grad(): b.visual.transformer.resblocks[0].mlp.c_fc.weight[3, 5] += 1e-4  # not on a 64-point stride
    assert weights_fingerprint(a) != weights_fingerprint(b)

def test_other_weights_are_another_run_folder_table_row_and_cache_key(tmp_path, weights):
    w1, w2 = weights
    runs = tmp_path/'runs'
    grid = ['reproduce', '--protocol', 'base2new', '--methods', 'zeroshot', '--datasets', 'micro-pairs', '--seeds', '1',
            '--out', runs]
    code, out1, err = main(*grid, '--checkpoint', w1); assert code == 0, err[-2000:]
    code, out2, err = main(*grid, '--checkpoint', w2); assert code == 0, err[-2000:]
    folders = sorted(p.parent for p in runs.rglob('metrics.json'))
    assert len(folders) == 2, folders  # not "finished (skipped)" with the first weights' numbers
    m = [json.loads((f/'metrics.json').read_text()) for f in folders]
    shas = {x['settings']['checkpoint']['sha256'] for x in m}
    assert shas == {hashlib.sha256(w.read_bytes()).hexdigest() for w in (w1, w2)}
    assert m[0]['new'] != m[1]['new']  # the shared cache did not hand the first weights' features to the second
    code, md, err = main('table', runs); assert code == 0, err
    assert md.count('| micro-pairs | zeroshot |') == 2 and 'weights ' in md
    # eval without the run's weights file, or with another one, is refused
    said(main('eval', '--run', folders[0]), 'pass it (--checkpoint FILE')
    other = w2 if m[0]['settings']['checkpoint']['sha256'] == hashlib.sha256(w1.read_bytes()).hexdigest() else w1
    said(main('eval', '--run', folders[0], '--checkpoint', other), 'its bytes differ')

def test_table_counts_a_copied_run_once_and_says_so(tmp_path, finished):
    runs = tmp_path/'runs'; shutil.copytree(finished, runs/'a'); shutil.copytree(finished, runs/'b')
    code, md, err = main('table', runs); assert code == 0, err
    assert '| 1 |' in md and '`b` is a copy of `a`' in md
    m = json.loads((runs/'b'/'metrics.json').read_text()); m['base'] += 1
    (runs/'b'/'metrics.json').write_text(json.dumps(m))
    said(main('table', runs), 'hold the same run', 'different results')
    (runs/'b'/'metrics.json').write_text('{"base": 1')  # a damaged copy: listed, not a traceback
    code, md, err = main('table', runs); assert code == 0, err
    assert '`b`: damaged' in md and '| 1 |' in md

# --- paths, devices, datasets checked up front ---

def test_bad_paths_are_one_sentence_and_leave_nothing(tmp_path):
    f = tmp_path/'file'; f.write_text('mine')
    train = ['train', '--method', 'zeroshot', *MICRO]
    said(main(*train, '--out', f), 'is a file, not a folder')
    said(main(*train, '--out', f/'run'), 'lies under', 'which is a file')
    said(main(*train, '--out', '/proc/vlprompt-x'), 'cannot create or write')
    said(main(*train, '--out', tmp_path/'r', '--cache', f), '--cache', 'is a file')
    said(main('reproduce', '--protocol', 'base2new', '--methods', 'zeroshot', '--datasets', 'micro-pairs', '--out', f), 'is a file')
    assert f.read_text() == 'mine' and sorted(p.name for p in tmp_path.iterdir()) == ['file']

@pytest.mark.skipif(torch.cuda.device_count() >= 8, reason='this machine has a cuda:7')
def test_devices_this_machine_lacks_are_refused(tmp_path):
    said(main('demo', '--device', 'cuda:7'), 'cuda:7', 'no such GPU')
    said(main('demo', '--device', 'gpu'), "'gpu' is not a torch device")
    if not torch.cuda.is_available():
        said(main('reproduce', '--protocol', 'base2new', '--methods', 'zeroshot', '--datasets', 'micro-pairs', '--gpus', '0,1',
                  '--out', tmp_path/'r'), '--gpus 0,1', 'no GPU 0')
        assert not (tmp_path/'r').exists()

@pytest.mark.parametrize('text,words', [('{"method": "coop", "protoc', 'is not valid JSON'), ('[1, 2]', 'is not the settings of a run'),
                                        ('{"method": "coop"}', 'is not the settings of a run')])
def test_eval_on_a_damaged_config_is_one_sentence(tmp_path, text, words):
    (tmp_path/'run').mkdir(); (tmp_path/'run'/'config.json').write_text(text)
    said(main('eval', '--run', tmp_path/'run'), words)

def test_reproduce_checks_every_dataset_before_the_first_run(tmp_path):
    said(main('reproduce', '--protocol', 'base2new', '--methods', 'zeroshot', '--datasets', 'micro-pairs', 'micro-pairz',
              '--seeds', '1', '--out', tmp_path/'r'), "'micro-pairz'")
    assert not (tmp_path/'r').exists()  # micro-pairs did not run first

# --- files, --help, offline, packaging ---

def test_written_files_follow_the_umask(tmp_path):
    from vlprompt.train import write_json, save_atomic
    old = os.umask(0o022)
    try:
        assert write_json(tmp_path/'a.json', {}).stat().st_mode & 0o777 == 0o644
        assert save_atomic({'x': 1}, tmp_path/'a.pt').stat().st_mode & 0o777 == 0o644
        os.umask(0o077); assert write_json(tmp_path/'b.json', {}).stat().st_mode & 0o777 == 0o600
    finally: os.umask(old)

def test_help_answers_without_importing_torch():
    code = ("import sys, contextlib, io\nfrom vlprompt.cli import main\nwith contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try: main(['--help'])\n    except SystemExit: pass\nassert 'train' in out.getvalue()\nprint(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))")
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=ENV)
    assert res.returncode == 0 and res.stdout.strip() == '[]', res.stdout + res.stderr

def test_train_help_lists_each_methods_set_options():
    from vlprompt.cli import build_parser
    text = build_parser('train')._subparsers._group_actions[0].choices['train'].format_help()
    for line in ('prograd: n_ctx (whole number), lam (number), temperature (number)', 'maple: n_ctx (whole number), depth',
                 'every method: epochs (whole number)'):
        assert line in ' '.join(text.split()), line

def test_offline_weights_fail_fast_without_hf_hub_offline(tmp_path):
    env = {k: v for k, v in ENV.items() if k != 'HF_HUB_OFFLINE'}
    env['HF_HOME'] = str(tmp_path/'hf')  # an empty cache: the weights are nowhere here
    t = time.time()
    res = subprocess.run([VLPROMPT, 'train', '--method', 'zeroshot', *MICRO, '--backbone', 'ViT-B-16', '--pretrained', 'openai',
                          '--out', tmp_path/'run'], capture_output=True, text=True, env=env)
    took = time.time() - t
    refused(res, 'ViT-B-16/openai', 'offline')
    assert took < 40, f'{took:.0f} s to say the weights cannot be downloaded'

def test_notebooks_import_only_what_a_plain_install_brings():
    "Every module the notebooks import at top level is the standard library, the kit, or a runtime requirement."
    import configparser, re
    root = Path(__file__).resolve().parents[1]
    cfg = configparser.ConfigParser(); cfg.read(root/'settings.ini')
    reqs = {re.split(r'[<>=!;\[ ]', r)[0].lower().replace('-', '_') for r in cfg['DEFAULT']['requirements'].split()}
    provides = {'open_clip_torch': 'open_clip', 'ipywidgets': 'ipywidgets'}
    allowed = {provides.get(r, r) for r in reqs} | set(sys.stdlib_module_names) | {'vlprompt', 'IPython', 'PIL', 'torchvision'}
    missing = {}
    for nb in sorted((root/'nbs').glob('*.ipynb')):
        for cell in json.loads(nb.read_text())['cells']:
            src = ''.join(cell['source'])
            if cell['cell_type'] != 'code' or '#| eval: false' in src: continue
            for m in re.finditer(r'^(?:from|import) ([A-Za-z_][\w]*)', src, re.M):
                if m.group(1) not in allowed: missing.setdefault(m.group(1), set()).add(nb.name)
    assert not missing, f'imported by notebooks but not installed by `pip install vlprompt`: {missing}'

# --- the property: random --set pairs and paths never give a traceback, and a refusal changes nothing ---

from hypothesis import HealthCheck, given, settings, strategies as st

KEYS = ['epochs', 'batch_size', 'lr', 'momentum', 'weight_decay', 'warmup_epochs', 'warmup_lr', 'views', 'amp', 'optimizer',
        'seed', 'n_ctx', 'ctx_init', 'csc', 'class_token_position', 'lam', 'temperature', 'alpha', 'beta', 'templates',
        'coop.n_ctx', 'prograd.lam', 'taskres.alpha', 'coop.bogus', 'sed', '', 'a.b.c', 'epochs.x']
VALUES = st.one_of(st.sampled_from(['1', '2', '0', '-1', '1.5', '1e9', '1e400', 'nan', 'true', 'false', 'null', 'abc', '',
                                    '[1, 2]', '{}', '"sgd"', 'adam', 'a photo of a', '0.5', '=', '01', '1_0']),
                   st.integers(-3, 3).map(str), st.text(alphabet='ab1.-e[]" ', max_size=6))
PAIR = st.tuples(st.sampled_from(KEYS), VALUES).map('='.join)
PAIRS = st.lists(st.one_of(PAIR, PAIR, PAIR, st.text(alphabet='a=1.', max_size=5)), min_size=1, max_size=3)
PATHS = st.sampled_from(['new', 'new', 'finished', 'finished', 'corrupt', 'unfinished_corrupt', 'file', 'under_file', 'proc'])

def _target(kind: str, tmp: Path, finished: Path) -> Path:
    if kind == 'file': (tmp/'f').write_text('mine'); return tmp/'f'
    if kind == 'under_file': (tmp/'f').write_text('mine'); return tmp/'f'/'run'
    if kind == 'proc': return Path('/proc/vlprompt-x')
    if kind in ('finished', 'corrupt', 'unfinished_corrupt'): shutil.copytree(finished, tmp/'run')
    if kind in ('corrupt', 'unfinished_corrupt'): (tmp/'run'/'config.json').write_text('{"method": "coop", "shots": [')
    if kind == 'unfinished_corrupt': (tmp/'run'/'metrics.json').unlink()
    return tmp/'run'

def _snapshot(path: Path):
    return None if not path.exists() else tree(path) if path.is_dir() else path.read_bytes()

@settings(max_examples=int(os.environ.get('VLPROMPT_PROPERTY_EXAMPLES', 30)), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(command=st.sampled_from(['train', 'eval', 'reproduce']), method=st.sampled_from(['zeroshot', 'coop', 'prograd', 'taskres']),
       pairs=PAIRS, where=PATHS, overwrite=st.booleans(), checkpoint=st.sampled_from([None, None, 'good', 'missing', 'garbage']))
def test_random_sets_and_paths_exit_0_or_2_and_a_refusal_changes_nothing(finished, tmp_path_factory, command, method, pairs,
                                                                         where, overwrite, checkpoint):
    tmp = tmp_path_factory.mktemp('prop')
    target = _target(where, tmp, finished)
    ckpt = [] if checkpoint is None else ['--checkpoint', tmp/f'{checkpoint}.pt']
    if checkpoint == 'garbage': (tmp/'garbage.pt').write_bytes(b'PK\x03\x04 not weights')
    if checkpoint == 'good':
        from vlprompt.micro import MICRO_CHECKPOINT
        shutil.copy(MICRO_CHECKPOINT, tmp/'good.pt')
    fast = ['epochs=1'] + pairs  # a valid run stays short (a pair may still set epochs, to at most 3)
    if command == 'train':
        args = ['train', '--method', method, *MICRO, '--set', *fast, '--out', target, *ckpt] + (['--overwrite'] if overwrite else [])
    elif command == 'eval':
        args = ['eval', '--run', target, *ckpt]
    else:
        args = ['reproduce', '--protocol', 'base2new', '--methods', method, '--datasets', 'micro-pairs', '--seeds', '1',
                '--set', *fast, '--out', target, *ckpt]
    before = _snapshot(target)
    code, _, err = main(*args)
    assert code in (0, 2), (args, code, err[-3000:])
    assert 'Traceback' not in err, (args, err[-3000:])
    if code == 2: assert _snapshot(target) == before, (args, err[-500:])

# --- the data root's split is part of a run: a run on other train / val lists is never mixed in ---

def _swap_a_train_and_a_test_image(images: Path):
    "Edit the folder's split file as a changed data root would: a train and a test image swap."
    path = images/'split_vlprompt.json'
    split = json.loads(path.read_text())
    j = next(j for j, t in enumerate(split['test']) if t[1] == split['train'][0][1])
    split['train'][0], split['test'][j] = split['test'][j], split['train'][0]
    path.write_text(json.dumps(split))

def test_a_run_trained_on_another_split_is_noticed_by_reproduce_eval_and_table(tmp_path):
    import csv
    from test_folder import micro_photos
    from vlprompt import bench
    from vlprompt.clip import VLPromptError
    images, runs = micro_photos(tmp_path/'images', per_class=8), tmp_path/'runs'
    data = ['--datasets', f'folder:{images}', '--shots', '2']
    grid = ['reproduce', '--protocol', 'base2new', '--methods', 'zeroshot', *data, '--seeds', '1',
            '--out', runs]
    code, _, err = main(*grid); assert code == 0, err[-2000:]
    folder = next(runs.rglob('metrics.json')).parent
    split = json.loads((folder/'metrics.json').read_text())['data']['splits_sha256']
    code, md, err = main('table', runs); assert code == 0, err
    rows = list(csv.DictReader(io.StringIO((runs/'results.csv').read_text())))
    assert [r['splits_sha256'] for r in rows] == [split]  # the table names the split
    _swap_a_train_and_a_test_image(images)
    before = tree(runs)
    said(main(*grid), str(folder), 'another split', split[:12])  # not "finished (skipped)"
    said(main('eval', '--run', folder), 'another split')  # not a fresh score on other files
    with pytest.raises(VLPromptError, match='another split'):
        bench.run(bench.read_config(folder), folder)
    assert tree(runs) == before
    code, _, err = main('train', '--method', 'zeroshot', '--dataset', f'folder:{images}',
                        '--protocol', 'base2new', '--shots', '2', '--seed', '2',
                        '--out', runs/'seed2')  # seed 2 of the same setting, on the changed split
    assert code == 0, err[-2000:]
    before = tree(runs)
    said(main('table', runs), 'zeroshot', '2 different splits', str(folder.relative_to(runs)),
         'seed2')
    assert tree(runs) == before  # no results.md that averages the two

# --- more bad inputs than the issue listed (its battery is rerun with new cases) ---

GRID = ['--methods', 'zeroshot', '--datasets', 'micro-pairs', '--seeds', '1', '--shots', '4']

def _grid(option=None, values=()):
    "reproduce's grid options with `option` given `values` instead."
    out = list(GRID)
    if option: i = out.index(option); out[i + 1:i + 2] = values
    return ['reproduce', '--protocol', 'base2new', *out]

@pytest.mark.parametrize('option,values', [
    ('--seeds', ['1', '1']), ('--methods', ['zeroshot', 'zeroshot']), ('--shots', ['4', '4']),
    ('--datasets', ['micro-pairs', 'micro-pairs'])])
def test_a_grid_that_names_one_run_twice_is_refused(tmp_path, option, values):
    "Before: the run was made once and the table counted it as two seeds ('seed ids 1 1', ± 0.0)."
    said(main(*_grid(option, values), '--out', tmp_path/'runs'), 'names one run twice')
    assert not (tmp_path/'runs').exists()

def test_an_empty_out_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    "Before: `--out ''` (an unset variable) wrote config.json, metrics.json, cache/ ... right here."
    monkeypatch.chdir(tmp_path)
    said(main('train', '--method', 'zeroshot', *MICRO, '--out', ''), '--out is empty')
    said(main(*_grid(), '--out', ' '), '--out is empty')
    assert list(tmp_path.iterdir()) == []

@pytest.mark.parametrize('template,words', [
    ('a {} of {}', 'must hold one {}'), ('a {} with {colour}', 'must hold one {}'),
    ('a {{}} photo', 'must hold one {}'), ('a photo of a {', 'has no {}')])
def test_a_template_without_exactly_one_slot_is_refused(tmp_path, template, words):
    "Before: 'a {} of {}' crashed zero-shot with an IndexError and was silently ignored by CoOp."
    for method in ('zeroshot', 'coop'):
        said(main('train', '--method', method, *MICRO, '--template', template,
                  '--out', tmp_path/method), words)
    assert list(tmp_path.iterdir()) == []

def test_a_metrics_json_of_another_run_is_listed_as_damaged(tmp_path, finished):
    "Before: settings {} in metrics.json gave a KeyError; another seed's metrics counted twice."
    runs = tmp_path/'runs'; shutil.copytree(finished, runs/'a'); shutil.copytree(finished, runs/'b')
    m = json.loads((runs/'b'/'metrics.json').read_text()); m['settings']['seed'] = 2
    (runs/'b'/'metrics.json').write_text(json.dumps(m))
    code, md, err = main('table', runs); assert code == 0, err
    assert '| 1 |' in md and '`b`: damaged' in md and "another run's settings" in md
    assert '1 2' not in md
    (runs/'b'/'metrics.json').write_text(json.dumps({**m, 'settings': {}}))
    code, md, err = main('table', runs); assert code == 0 and 'Traceback' not in err, err
    assert '`b`: damaged' in md

def test_zero_workers_and_a_table_out_that_is_a_folder_are_refused(tmp_path, finished):
    said(main(*_grid(), '--workers', '0', '--out', tmp_path/'runs'), '--workers 0')  # was 1 worker
    assert not (tmp_path/'runs').exists()
    before = tree(finished)
    said(main('table', finished, '--out', tmp_path), 'is a folder')  # was: wrote OUT.md beside it
    assert tree(finished) == before and list(tmp_path.iterdir()) == []
