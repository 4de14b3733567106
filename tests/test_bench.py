"Runs, grids and the CLI's train / eval / reproduce, on the micro world."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from vlprompt import bench
from vlprompt.clip import VLPromptError
import vlprompt.clip as vclip

VLPROMPT = str(Path(sys.executable).parent/'vlprompt')

def cli(*args, **kw):
    return subprocess.run([VLPROMPT, *map(str, args)], capture_output=True, text=True, **kw)

def test_reproduce_prints_mean_and_std_over_seeds(tmp_path):
    res = cli('reproduce', '--protocol', 'base2new', '--methods', 'zeroshot', '--datasets', 'micro-pairs',
              '--seeds', 1, 2, 3, '--out', tmp_path)
    assert res.returncode == 0, res.stderr
    line = next(l for l in res.stdout.splitlines() if l.startswith('| micro-pairs | zeroshot | 3 |'))
    base, new, hm = (float(c.split('±')[0]) for c in line.split('|')[4:7])
    assert 55 < base < 80 and 30 < new < base and hm == pytest.approx(2 * base * new / (base + new), abs=0.2)
    assert (tmp_path/'base2new-results.md').read_text().startswith('| dataset | method |')
    runs = list(tmp_path.glob('base2new/micro-pairs/zeroshot/*/metrics.json'))
    assert len(runs) == 3

def test_a_folder_with_other_settings_is_refused(tmp_path):
    s = bench.run_settings('zeroshot', 'fewshot', 'micro-pairs', 16, 1)
    bench.run(s, tmp_path/'run', progress=False)
    other = bench.run_settings('zeroshot', 'fewshot', 'micro-pairs', 8, 1)
    with pytest.raises(VLPromptError, match='shots: 16 there, 8 now'):
        bench.run(other, tmp_path/'run', progress=False)
    assert json.loads((tmp_path/'run'/'metrics.json').read_text())['settings']['shots'] == 16

def test_a_run_from_before_a_new_training_setting_still_counts(tmp_path):
    "A run folder written before TrainConfig gained a setting is the same run when the new setting is at its default."
    s = bench.run_settings('zeroshot', 'fewshot', 'micro-pairs', 16, 1)
    bench.run(s, tmp_path/'run', progress=False)
    config = json.loads((tmp_path/'run'/'config.json').read_text())
    del config['train']['iterations'], config['train']['min_lr']  # as an older kit wrote it
    (tmp_path/'run'/'config.json').write_text(json.dumps(config))
    assert bench.config_differences(tmp_path/'run', s) == []
    assert bench.overrides(config) == {}  # and its row in a table is the method's configuration
    changed = dict(s, train=dict(s['train'], iterations=5))
    assert bench.config_differences(tmp_path/'run', changed) == ['train.iterations: 0 there, 5 now']

def test_cli_errors_are_one_paragraph(tmp_path):
    res = cli('train', '--method', 'cop', '--dataset', 'micro-pairs', '--out', tmp_path/'x')
    assert res.returncode == 2 and "Did you mean 'coop'" in res.stderr and 'Traceback' not in res.stderr
    res = cli('train', '--method', 'zeroshot', '--dataset', 'micro-pair', '--out', tmp_path/'x')
    assert res.returncode == 2 and "micro-pairs" in res.stderr and 'Traceback' not in res.stderr
    res = cli('eval', '--run', tmp_path)
    assert res.returncode == 2 and 'not a run folder' in res.stderr

def test_train_writes_metrics_and_refuses_a_finished_run(tmp_path):
    out = tmp_path/'run'
    res = cli('train', '--method', 'zeroshot', '--dataset', 'micro-pairs', '--protocol', 'base2new', '--out', out)
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out/'metrics.json').read_text())
    assert 55 < metrics['base'] < 80 and metrics['settings']['protocol'] == 'base2new'
    res = cli('train', '--method', 'zeroshot', '--dataset', 'micro-pairs', '--protocol', 'base2new', '--out', out)
    assert res.returncode == 2 and '--overwrite' in res.stderr
    assert json.loads((out/'metrics.json').read_text()) == metrics
    res = cli('eval', '--run', out)
    assert res.returncode == 0 and json.loads(res.stdout)['hm'] == pytest.approx(metrics['hm'])

RULE_RUN = ['--method', 'maple', '--rule', 'prograd', '--set', 'epochs=8', 'lam=0.8']

@pytest.mark.parametrize('method', [['--method', 'coop'], RULE_RUN], ids=['coop', 'maple-prograd'])
def test_killed_training_resumes_to_the_uninterrupted_metrics(tmp_path, method):
    """SIGKILL in the middle of `vlprompt train`, run it again: the same metrics as a run never
    interrupted (a run with a gradient rule too)."""
    args = ['train', *method, '--dataset', 'micro-pairs', '--protocol', 'base2new', '--shots', 16,
            '--seed', 2]
    res = cli(*args, '--out', tmp_path/'straight')
    assert res.returncode == 0, res.stderr
    straight = json.loads((tmp_path/'straight'/'metrics.json').read_text())
    killed = tmp_path/'killed'
    proc = subprocess.Popen([VLPROMPT, *map(str, args), '--out', str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed/'checkpoint.pt').exists() and time.time() < deadline: time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (killed/'metrics.json').exists(), 'the run finished before it could be killed'
    first_epochs = torch.load(killed/'checkpoint.pt', weights_only=True)['epoch']
    assert first_epochs < straight['settings']['train']['epochs'] - 1
    res = cli(*args, '--out', killed)
    assert res.returncode == 0, res.stderr
    resumed = json.loads((killed/'metrics.json').read_text())
    assert (resumed['base'], resumed['new'], resumed['hm']) == (straight['base'], straight['new'], straight['hm'])
    assert resumed['settings'] == straight['settings']
    assert straight['settings'].get('rule') == ('prograd' if method == RULE_RUN else None)

def test_real_image_path_end_to_end(tmp_path, monkeypatch):
    "A fake Oxford Pets folder in CoOp's layout, through PIL transforms, the feature cache, CoOp training and evaluation."
    import open_clip
    from vlprompt.clip import LoadedCLIP, micro_tokenizer, tiny_clip
    from vlprompt.data import make_fake_dataset
    from vlprompt import train as train_module
    make_fake_dataset('oxford_pets', tmp_path/'data', n_classes=3, per_class=(6, 3, 4), size=40)
    preprocess = open_clip.image_transform(32, is_train=False)
    tiny = LoadedCLIP(tiny_clip(), micro_tokenizer(), preprocess, 'tiny-real')
    monkeypatch.setitem(vclip._CLIPS, ('tiny-real', None, None), tiny)
    s = bench.run_settings('coop', 'fewshot', 'oxford_pets', 4, 1, backbone='tiny-real')
    s['train']['epochs'] = 3
    metrics = bench.run(s, tmp_path/'run', tmp_path/'data', tmp_path/'cache', progress=False)
    assert 0 <= metrics['accuracy'] <= 100
    assert (tmp_path/'cache'/'fewshot'/'oxford_pets'/'shot_4-seed_1.json').exists()
    cached = sorted(p.name for p in (tmp_path/'cache'/'features').iterdir())
    assert len(cached) == 2 and all(n.startswith('oxford_pets-') for n in cached)  # train view 0 and test
    calls = []
    monkeypatch.setattr(bench, 'image_features', lambda *a, **k: calls.append(1))
    again = bench.run(s, tmp_path/'run2', tmp_path/'data', tmp_path/'cache', progress=False)
    assert calls == [] and again['accuracy'] == metrics['accuracy']  # every feature came from the cache

@pytest.mark.parametrize('method,protocol', [('tip_adapter_f', 'base2new'), ('linprobe', 'fewshot'), ('maple', 'base2new')])
def test_eval_rebuilds_prepared_and_image_methods(tmp_path, method, protocol):
    "`eval` prepares again (caches, probes), reloads the learned tensors and calibrates: the run's own metrics come back."
    s = bench.run_settings(method, protocol, 'micro-pairs', 4, 1, train=dict(epochs=1))
    metrics = bench.run(s, tmp_path/'run', progress=False)
    again = bench.evaluate_run(tmp_path/'run')
    assert set(again) == {k for k, v in metrics.items() if isinstance(v, float)} - {'seconds', 'conflict_fraction'}
    for k, v in again.items(): assert v == pytest.approx(metrics[k], abs=1e-9), k

@pytest.mark.parametrize('dataset,template,fixed', [('oxford_pets', 'a type of pet, a photo of a {}.', 1),
                                                     ('dtd', 'a texture of {}.', 0), ('food101', 'a type of food, a photo of {}.', 1)])
def test_prograd_runs_use_its_own_template_for_init_and_teacher(tmp_path, monkeypatch, dataset, template, fixed):
    "A real-dataset ProGrad run (fake folder): the student starts from ProGrad's template, official layout; the teacher is its classifier."
    from vlprompt.clip import LoadedCLIP, micro_tokenizer, tiny_clip, zeroshot_weights
    from vlprompt.data import load_dataset, make_fake_dataset, subsample_classes
    make_fake_dataset(dataset, tmp_path/'data', n_classes=4, per_class=(2, 1, 1), size=16)
    clip = LoadedCLIP(tiny_clip(), micro_tokenizer(), None, 'tiny-real')
    s = bench.run_settings('prograd', 'base2new', dataset, 1, 1, backbone='tiny-real')
    data = subsample_classes(load_dataset(dataset, tmp_path/'data'), 'base')
    assert data.template != template  # CoOp's template differs from ProGrad's for these datasets
    method, rule = bench.build_run(s, clip, data)
    phrase = template.replace(' {}.', '')
    w = len(phrase.split(' '))
    assert method.n_ctx == 16 and method.n_fixed == fixed and method.ctx[:16 - w].abs().sum() == 0
    ids = micro_tokenizer()([' '.join(['X'] * (16 - w) + [phrase, n]) + '.' for n in data.classnames])
    assert torch.equal(method.eot, ids.argmax(-1))  # the official prompt's EOT
    torch.testing.assert_close(rule.teacher_weights, zeroshot_weights(clip, data.classnames, template))
