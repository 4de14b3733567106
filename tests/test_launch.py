"Launchers on the micro world: a local pool equals one by one, a killed launcher continues, Slurm submissions, refusals."
import ast, hashlib, json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
from vlprompt import bench, launch
from vlprompt.clip import VLPromptError

ROOT = Path(__file__).resolve().parents[1]
VLPROMPT = str(Path(sys.executable).parent/'vlprompt')
METHODS, DATASETS, SEEDS, EPOCHS = ['zeroshot', 'coop'], ['micro-pairs', 'micro-shapes'], (1, 2), 6
CLI_GRID = ['reproduce', '--protocol', 'base2new', '--methods', *METHODS, '--datasets', *DATASETS,
            '--seeds', *map(str, SEEDS), '--set', f'epochs={EPOCHS}']

def grid(): return bench.plan('base2new', METHODS, DATASETS, SEEDS, train=dict(epochs=EPOCHS))
def scores(rows): return [(r['settings']['method'], r['settings']['dataset'], r['settings']['seed'], r['base'], r['new'], r['hm']) for r in rows]
def metrics_files(root): return sorted(Path(root).glob('base2new/*/*/*/metrics.json'))

def tree_digest(root):
    "Names and bytes of every file under root."
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob('*')):
        if p.is_file(): h.update(str(p.relative_to(root)).encode()); h.update(p.read_bytes())
    return h.hexdigest()

@pytest.fixture(scope='module')
def one_by_one(tmp_path_factory):
    "The grid run one run after another in this process: the reference."
    out = tmp_path_factory.mktemp('one-by-one')
    return bench.reproduce('base2new', METHODS, DATASETS, SEEDS, out=out, progress=False, train=dict(epochs=EPOCHS))

def test_pool_of_two_workers_equals_one_by_one(tmp_path, one_by_one):
    rows = launch.run_local(grid(), tmp_path, workers=2, progress=False)
    assert scores(rows) == scores(one_by_one)
    pids = {l.split('(pid ')[1].split(')')[0] for p in tmp_path.glob('base2new/*/*/*/log.txt') for l in p.read_text().splitlines() if 'start:' in l}
    assert len(pids) == 2 and str(os.getpid()) not in pids  # two worker processes did the runs
    again = launch.run_local(grid(), tmp_path, workers=2, progress=False)  # all finished: nothing starts
    assert scores(again) == scores(one_by_one)

def _wait(cond, timeout=180):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline: raise AssertionError('timed out waiting')
        time.sleep(0.05)

def _group_gone(pgid, timeout=15):
    "True once no process of the group (the launcher and its workers) is left."
    deadline = time.time() + timeout
    while time.time() < deadline:
        try: os.killpg(pgid, 0)
        except ProcessLookupError: return True
        time.sleep(0.1)
    return False

def test_killed_launcher_reruns_only_what_was_missing(tmp_path, one_by_one):
    "SIGKILL the launcher, then Ctrl-C (SIGINT) it, then let it finish: finished runs never run twice; the table is the uninterrupted one."
    args = [VLPROMPT, *CLI_GRID, '--workers', '2', '--out', str(tmp_path)]
    unfinished = lambda: [c.parent for c in tmp_path.glob('base2new/*/*/*/config.json') if not (c.parent/'metrics.json').exists()]
    # 1. SIGKILL once some runs have finished and others are under way: the launcher cannot clean up, its workers stop by themselves
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait(lambda: len(metrics_files(tmp_path)) >= 2 and unfinished())
    proc.kill(); proc.wait()
    assert _group_gone(proc.pid), 'workers outlived their killed launcher'
    first = {p: p.read_bytes() for p in metrics_files(tmp_path)}
    assert 2 <= len(first) < len(grid()), 'the grid finished before the launcher could be killed'
    # 2. Ctrl-C (SIGINT to the launcher) once one more run has finished: a clean stop, exit status 130
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait(lambda: len(metrics_files(tmp_path)) > len(first) or proc.poll() is not None)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert _group_gone(proc.pid)
    assert out.startswith(f'{len(grid())} runs: {len(first)} finished (skipped)')
    if proc.returncode != 0:  # stopped before the end (it may have finished the few remaining runs first)
        assert proc.returncode == 130 and 'Run the same command again to continue' in err, err
    for p in metrics_files(tmp_path): json.loads(p.read_text())  # no half-written metrics
    # 3. Run to the end: only the missing runs run
    res = subprocess.run(args, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert {p: p.read_bytes() for p in first} == first  # untouched
    logs = [p.read_text() for p in tmp_path.glob('base2new/*/*/*/log.txt')]
    assert len(logs) == len(grid()) and all(l.count(' finished in ') == 1 for l in logs)  # every run finished exactly once
    assert any('resuming after epoch' in l for l in logs) or any('interrupted' in l for l in logs)
    table = bench.results_table(one_by_one)
    assert res.stdout.strip().endswith(table)
    assert (tmp_path/'base2new-results.md').read_text().strip() == table

def test_a_second_launcher_skips_the_run_another_one_is_writing(tmp_path, one_by_one, capsys, another_writer):
    runs = grid()
    busy = launch.survey(runs, tmp_path)[1]['folder']
    other = another_writer(busy)  # the first launcher, on run 1
    rows = launch.run_local(runs, tmp_path, progress=False)
    out = capsys.readouterr().out
    assert f'SKIPPED {busy} is being written by another process (pid {other.pid}' in out, out
    assert rows[1] is None and all(r is not None for i, r in enumerate(rows) if i != 1)
    assert sorted(p.name for p in busy.iterdir()) == ['.lock']  # the second launcher wrote nothing there
    other.kill(); other.wait()
    assert scores(launch.run_local(runs, tmp_path, progress=False)) == scores(one_by_one)  # the first one gone: it runs, and all agree

def _stub(bin_dir: Path, name: str, body: str):
    path = bin_dir/name
    path.write_text('#!/bin/sh\n' + body + '\n'); path.chmod(0o755)

def test_slurm_submission_asks_for_an_array_one_gpu_per_task_the_time_and_requeue(tmp_path, monkeypatch):
    pytest.importorskip('submitit')
    bin_dir, log = tmp_path/'bin', tmp_path/'calls'
    bin_dir.mkdir(); log.mkdir()
    _stub(bin_dir, 'sbatch', f'echo "$@" >> {log}/sbatch.args\ncp "$1" {log}/submitted.sh\necho "Submitted batch job 4242"')
    _stub(bin_dir, 'srun', f'echo "$@" >> {log}/srun.args')
    _stub(bin_dir, 'squeue', 'echo "JOBID PARTITION NAME USER ST TIME NODES NODELIST(REASON)"')
    monkeypatch.setenv('PATH', f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    runs = grid()
    dry = launch.run_slurm(runs, tmp_path/'runs', time='2:00:00', partition='gpu', array_parallelism=3, dry_run=True)
    assert not (log/'sbatch.args').exists() and not (tmp_path/'runs').exists()  # a dry run submits and writes nothing
    sub = launch.run_slurm(runs, tmp_path/'runs', time='2:00:00', partition='gpu', array_parallelism=3, options=dict(account='lab'))
    script = (log/'submitted.sh').read_text()
    for flag in (f'--array=0-{len(runs) - 1}%3', '--gpus-per-task=1', '--ntasks-per-node=1', '--time=120', '--signal=USR2@120',
                 '--requeue', '--partition=gpu', '--account=lab'):
        assert f'#SBATCH {flag}\n' in script, flag
    assert script.replace('#SBATCH --account=lab\n', '') == dry['script']  # --dry-run shows what is submitted
    assert [j.job_id for j in sub['jobs']] == [f'4242_{i}' for i in range(len(runs))]
    from submitit.core.utils import DelayedSubmission
    tasks = [DelayedSubmission.load(j.paths.submitted_pickle) for j in sub['jobs']]
    assert all(isinstance(t.function, launch.RunTask) for t in tasks)
    assert [t.args[1] for t in tasks] == [str(bench.run_dir(tmp_path/'runs', s)) for s in runs]
    with pytest.raises(VLPromptError, match='--time is required'):
        launch.run_slurm(runs, tmp_path/'runs', time=None)

def test_slurm_tasks_through_submitit_give_the_same_metrics_and_requeue_resumes(tmp_path, monkeypatch, one_by_one):
    pytest.importorskip('submitit')
    sub = launch.run_slurm(grid(), tmp_path/'runs', time=60, cluster='debug')
    assert scores([job.result() for job in sub['jobs']]) == scores(one_by_one)
    # pre-emption: the run stops after 2 epochs (SystemExit, as submitit exits after requeueing); `checkpoint` hands back
    # the same call, which resumes from epoch 2 and ends with the uninterrupted metrics
    s = next(s for s in grid() if s['method'] == 'coop')
    folder, cache = str(bench.run_dir(tmp_path/'pre', s)), str(tmp_path/'pre'/'cache')
    import vlprompt.train as train_module  # the loop `train_method` calls
    real_fit = train_module.fit
    def preempted_fit(*a, **k):
        real_fit(*a, **k, stop_after=2); raise SystemExit(-1)
    monkeypatch.setattr(train_module, 'fit', preempted_fit)
    task = launch.RunTask()
    with pytest.raises(SystemExit): task(s, folder, cache)
    monkeypatch.setattr(train_module, 'fit', real_fit)
    requeued = task.checkpoint(s, folder, cache)
    assert requeued.function is task and requeued.args == (s, folder, cache)
    metrics = requeued.result()
    log = (Path(folder)/'log.txt').read_text()
    assert 'stopped (exit -1)' in log and 'requeued' in log and 'resuming after epoch 2' in log
    ref = next(r for r in one_by_one if r['settings'] == s)
    assert (metrics['base'], metrics['new'], metrics['hm']) == (ref['base'], ref['new'], ref['hm'])

def test_a_folder_with_another_config_is_refused_and_left_unchanged(tmp_path, monkeypatch):
    runs = bench.plan('base2new', ['coop'], ['micro-shapes'], (1,), train=dict(epochs=2))
    launch.run_local(runs, tmp_path, progress=False)
    folder = bench.run_dir(tmp_path, runs[0])
    (folder/'metrics.json').unlink()  # an unfinished run, so that a launcher would resume it
    before = tree_digest(tmp_path)
    micro = bench.CONFIGS[('coop', 'base2new')]['micro']
    monkeypatch.setitem(bench.CONFIGS[('coop', 'base2new')], 'micro', {**micro, 'train': {**micro['train'], 'lr': 0.02}})  # the config changed
    changed = bench.plan('base2new', ['coop'], ['micro-shapes'], (1,), train=dict(epochs=2))
    assert bench.run_dir(tmp_path, changed[0]) == folder  # same run name, other settings
    for attempt in (lambda: launch.run_local(changed, tmp_path, progress=False),
                    lambda: launch.run_local(changed, tmp_path, workers=2, progress=False),
                    lambda: launch.run_slurm(changed, tmp_path, time=10, cluster='debug'),
                    lambda: bench.reproduce('base2new', ['coop'], ['micro-shapes'], (1,), out=tmp_path, progress=False, train=dict(epochs=2))):
        with pytest.raises(VLPromptError, match=r'train\.lr: 0\.01 there, 0\.02 now'): attempt()
        assert tree_digest(tmp_path) == before

def test_table_lists_missing_runs_and_names_how_rows_were_made(tmp_path, one_by_one):
    out = tmp_path/'runs'
    runs = grid()[:3]
    launch.run_local(runs, out, progress=False)
    bench.write_grid(out, grid())  # the whole grid was planned; 5 runs never started
    res = subprocess.run([VLPROMPT, 'table', str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert '| dataset | method | seeds | base | new | hm | backbone | shots | seed ids | checkpoint | HM averaging |' in res.stdout
    assert '| micro-pairs | zeroshot | 2 |' in res.stdout and '| micro-pairs | coop (epochs=6) | 1 |' in res.stdout and 'last epoch' in res.stdout
    assert 'HM per seed, then mean ± std' in res.stdout and 'sampled (Dassl rule' in res.stdout
    single = next(l for l in res.stdout.splitlines() if l.startswith('| micro-pairs | coop (epochs=6) | 1 |'))
    assert '±' not in single and "HM of the one seed's B and N" in single, single  # one seed: no spread shown
    assert 55 < float(single.split('|')[4]) < 100
    assert res.stdout.count('not started') == len(grid()) - 3
    csv = (out/'results.csv').read_text().splitlines()
    assert csv[0].startswith('protocol,dataset,method,variant,backbone,pretrained,shots,n_seeds,seeds,base_mean,base_std')
    assert (out/'results.md').read_text().strip() == res.stdout.split('\nwrote ')[0].strip()

def test_published_indices_are_used_and_named(tmp_path, one_by_one):
    "A grid rerun from the index set the first grid wrote gives the same metrics, and the table says where the shots came from."
    first = Path(one_by_one[0]['indices']['file']).parents[2]  # OUT/cache of the reference grid
    runs = bench.plan('base2new', METHODS, DATASETS[1:], SEEDS, train=dict(epochs=EPOCHS), split_indices=first/'indices')
    rows = launch.run_local(runs, tmp_path, split_indices=first/'indices', progress=False)
    ref = [r for r in one_by_one if r['settings']['dataset'] == DATASETS[1]]
    assert [(r['base'], r['new'], r['hm']) for r in rows] == [(r['base'], r['new'], r['hm']) for r in ref]
    assert all(r['indices']['source'] == 'index set' for r in rows)
    assert [r['indices']['positions_sha256'] for r in rows] == [r['indices']['positions_sha256'] for r in ref]
    assert f"index set {first/'indices'}" in bench.results_table(rows)
    assert all('-indices-' in str(bench.run_dir(tmp_path, s)) for s in runs)  # its own folders, never a sampled run's

def test_submitit_is_an_optional_import():
    "The kit imports without submitit: it is imported only inside the Slurm launcher's functions."
    tree = ast.parse((ROOT/'vlprompt'/'launch.py').read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not any('submitit' in ast.unparse(n) for n in top)
    extras = (ROOT/'settings.ini').read_text()
    assert 'slurm_requirements = submitit' in extras
    assert "'slurm': " in (ROOT/'setup.py').read_text()

def test_progress_shows_each_run_and_says_where_the_time_went(tmp_path, capsys):
    "A bar over the runs and one over each run's epochs, on_result per run, the time per method and phase; progress=False: silent."
    runs = bench.plan('base2new', ['zeroshot', 'coop'], ['micro-pairs'], (1, 2), train=dict(epochs=2))
    seen = []
    rows = launch.run_local(runs, tmp_path/'a', on_result=lambda i, m: seen.append((i, m['hm'])))
    out, err = capsys.readouterr()
    assert seen == [(i, r['hm']) for i, r in enumerate(rows)]
    assert 'runs: 100%' in err and 'CoOp' in err, err  # the grid's bar, then CoOp's over its epochs
    report = out[out.index('Where the time went (4 runs in '):].splitlines()
    assert report[1].split() == ['method', 'runs', 'run', 'total', *launch.PHASES]
    table = {l.split()[0]: [float(x) for x in l.split()[1:]] for l in report[2:]}
    assert list(table) == ['zeroshot', 'coop', 'all'] and [t[0] for t in table.values()] == [2, 2, 4]
    for method in ('zeroshot', 'coop'):
        seconds = sum(r['seconds'] for r in rows if r['settings']['method'] == method)
        assert table[method][1] == pytest.approx(seconds, abs=0.06)
        assert sum(table[method][2:]) <= table[method][1] + 0.3  # the phases lie within the runs
    assert table['coop'][5] > 0.5 and table['zeroshot'][5] == 0  # training: CoOp only
    assert sum(table['coop'][2:]) > table['coop'][1] / 2  # the phases hold most of a run's time
    launch.run_local(runs, tmp_path/'b', progress=False)
    assert capsys.readouterr() == ('', '')
