"""GDA, LP++, ZS-LP and CLAP (issue 22) across notebooks: the closed forms against direct numpy
computations, GDA's alpha never chosen on test (and the paper's protocol labelled), LP++'s step
size, CLAP between ZS-LP and the zero-shot prototypes, and runs through the CLI and the tables."""
import json, math, statistics
import numpy as np
import pytest, torch
import torch.nn.functional as F
from vlprompt import bench, cli
from vlprompt.clip import load_clip
from vlprompt.data import fewshot_splits, load_dataset
from vlprompt.methods.linear_heads import (CLAP, GDA, LPP, GDA_ALPHAS, gda_classifier,
                                           gda_precision, lpp_step_sizes)
from vlprompt.train import TrainConfig, train_method

@pytest.fixture(scope='module')
def world():
    clip = load_clip('micro', device='cpu')
    full = load_dataset('micro-pairs')
    data = fewshot_splits(full, 4, seed=1, cache_dir=None)
    train = bench.dataset_features(clip, data, 'train', views=3, augment=True)
    val = bench.dataset_features(clip, data, 'val')
    return clip, full, data, train, val

def _numpy_lda(x, y, K):
    "Shared-covariance GDA written out in numpy: the official KS estimate, then w, b."
    x = np.asarray(x, dtype=np.float64); y = np.asarray(y)
    N, D = x.shape
    mu = np.stack([x[y == k].mean(0) for k in range(K)])
    c = x - mu[y]
    S = sum(np.outer(v, v) for v in c)  # the within-class scatter, one sample at a time
    P = D * np.linalg.pinv(S + np.trace(S / (N - 1)) * np.eye(D))
    W = np.stack([P @ mu[k] for k in range(K)])
    b = np.array([np.log(1 / K) - 0.5 * mu[k] @ P @ mu[k] for k in range(K)])
    return mu, P, W, b

def _close(a, b, tol=1e-5):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max())

def test_gda_closed_form_equals_a_direct_numpy_computation(world):
    clip, full, data, (tx, ty), val = world
    x = F.normalize(tx.reshape(-1, tx.shape[-1]), dim=-1)
    y = ty.repeat(tx.shape[0])
    mu, P, W, b = _numpy_lda(x.numpy(), y.numpy(), 64)
    t_mu, t_P = gda_precision(x.double(), y, 64)
    t_W, t_b = gda_classifier(t_mu, t_P)
    assert _close(t_mu, mu) and _close(t_P, P) and _close(t_W, W) and _close(t_b, b)
    gda = GDA(clip, data.classnames, data.template, alpha=1.0).prepare(tx, ty)  # the module's
    assert _close(gda.weight, W) and _close(gda.bias, b)
    # and its logits are the Gaussian posterior's: log N(x; mu_k, P^-1) + log(1/K), up to a
    # term the same for every class
    xs = x[:20].double().numpy()
    log_density = np.stack([-0.5 * np.einsum('nd,de,ne->n', xs - mu[k], P, xs - mu[k])
                            for k in range(64)], 1)
    lin = xs @ W.T + b
    assert _close(lin - lin.max(1, keepdims=True), log_density - log_density.max(1, keepdims=True),
                  1e-6)

def test_gdas_alpha_is_chosen_on_the_fewshot_val_split_never_on_test(world, monkeypatch):
    clip, full, data, train, val = world
    seen, reads = [], []
    real_search, real_features = GDA.search, bench.dataset_features
    def search(self, f, y):
        seen.append((len(y), ('test', False) in reads or any(s == 'test' for s, _ in reads)))
        return real_search(self, f, y)
    def features(clip, dataset, split, *a, **k):
        reads.append((split, len(dataset.split(split).items)))
        return real_features(clip, dataset, split, *a, **k)
    monkeypatch.setattr(GDA, 'search', search)
    monkeypatch.setattr(bench, 'dataset_features', features)
    m = bench.run(bench.run_settings('gda', 'fewshot', 'micro-pairs', 2, 1, train=dict(views=2)),
                  progress=False)
    n_val = len(fewshot_splits(full, 2, seed=1, cache_dir=None).val.items)  # min(K, 4) per class
    assert seen == [(n_val, False)] and n_val == 2 * 64 < len(full.val.items)
    assert [s for s, _ in reads].index('test') > [s for s, _ in reads].index('val')
    assert m['selection'] == 'α on the few-shot val (min(K, 4) per class)'
    assert m['alpha'] in GDA_ALPHAS and m['accuracy'] > 5 * 100 / 64

def test_paper_selection_uses_the_full_val_split_and_the_table_says_so(monkeypatch):
    seen = []
    real = GDA.search
    monkeypatch.setattr(GDA, 'search', lambda self, f, y: seen.append(len(y)) or real(self, f, y))
    rows = [bench.run(bench.run_settings('gda', 'fewshot', 'micro-pairs', 2, 1, train=dict(views=2),
                                         method_options=dict(paper_selection=p)), progress=False)
            for p in (False, True)]
    assert seen == [2 * 64, len(load_dataset('micro-pairs').val.items)]
    assert rows[1]['selection'] == 'α on the full val split (paper)'
    table = bench.results_table(rows)
    head, _, default, paper = table.splitlines()
    assert '| selection |' in head and 'paper_selection=True' in paper
    assert 'full val split (paper)' in paper and 'few-shot val' in default
    assert 'RN50 66.19' in default  # the few-shot paper column at these shots

def test_lpp_step_size_is_the_lipschitz_bound_formula(world):
    clip, full, data, (tx, ty), val = world
    f = F.normalize(tx[0], dim=-1)
    lpp = LPP(clip, data.classnames, data.template, train_epoch=20, seed=1).prepare(tx[:1], ty)
    fn, tn = f.double().numpy(), lpp.class_weights.double().numpy()
    N = len(fn)
    lr_w = 4 * N / np.linalg.eigvalsh(fn.T @ fn).max()
    lr_alpha = N / (4 * ((fn @ tn.T) ** 2).sum(0).max())
    assert math.isclose(lpp.history['lr_w'], lr_w, rel_tol=1e-6)
    assert math.isclose(lpp.history['lr_alpha'], lr_alpha, rel_tol=1e-6)
    assert lpp_step_sizes(f, lpp.class_weights) == (lpp.history['lr_w'], lpp.history['lr_alpha'])
    assert lpp.history['losses'][-1] < lpp.history['losses'][0]  # that step size descends
    # the multipliers move only every 10 epochs, by the accumulated gradient
    assert not torch.allclose(lpp.alpha, torch.full_like(lpp.alpha, lpp.history['alpha_init']))

def _clap(world, epochs=60, **options):
    clip, full, data, (tx, ty), (vx, vy) = world
    m = CLAP(clip, data.classnames, data.template, **options)
    cfg = TrainConfig(optimizer='sgd', lr=0.1, batch_size=256, epochs=epochs, weight_decay=0.0,
                      views=3, seed=1)
    train_method(m, tx, ty, vx, vy, cfg)
    return m

def test_clap_between_zslp_and_the_zero_shot_prototypes(world):
    zslp = _clap(world, constraint='none')
    assert torch.equal(_clap(world, penalty_scale=0.0).prototypes, zslp.prototypes)  # 0: ZS-LP
    hard = _clap(world, penalty_scale=float('inf'))
    assert torch.equal(hard.prototypes, hard.base) and hard.shift() == 0.0  # inf: zero-shot
    clap, held = _clap(world), _clap(world, penalty_scale=100.0)
    assert zslp.shift() > 0.01
    assert held.shift() < 0.2 * zslp.shift()  # a large weight keeps them near zero-shot ...
    assert held.shift() < clap.shift() <= zslp.shift()  # ... and the weight orders the shifts
    w = clap.penalty_weights
    assert 0 < w.min() and w.max() <= 1 and w.std() > 0  # class-wise

@pytest.mark.parametrize('method', ['gda', 'lpp', 'zslp', 'clap'])
def test_a_micro_run_beats_chance_and_writes_metrics(tmp_path, method):
    out = tmp_path/method
    cli.main(['train', '--method', method, '--protocol', 'fewshot', '--dataset', 'micro-pairs',
              '--shots', '2', *(['--set', 'epochs=20'] if method in ('zslp', 'clap') else []),
              '--out', str(out)])
    m = json.loads((out/'metrics.json').read_text())
    assert m['settings']['method'] == method and m['accuracy'] > 5 * 100 / 64

def test_gda_base_to_new_synthesises_the_new_classes():
    m = bench.base_to_new('gda', shots=4, views=2)
    assert m['base'] > 5 * 100 / 32 and m['new'] > 5 * 100 / 32 and m['hm'] > 0

def test_ten_seeds_give_a_95_percent_confidence_interval(capsys):
    rows = [bench.run(bench.run_settings('lpp', 'fewshot', 'micro-pairs', 1, seed,
                                         method_options=dict(train_epoch=30)), progress=False)
            for seed in range(1, 11)]
    accs = [r['accuracy'] for r in rows]
    ci = 1.96 * statistics.pstdev(accs) / math.sqrt(10)
    head, _, row = bench.results_table(rows).splitlines()
    assert '95% CI of accuracy' in head and f'± {ci:.1f} |' in row and ci > 0
    assert 'ViT-B/16' not in row  # LP++ has no 1-shot number the kit could source
    assert 'accuracy_ci95' in bench.results_csv(rows)
    assert '95% CI' not in bench.results_table(rows[:3])  # fewer seeds: mean ± std only
    args = cli.build_parser().parse_args(['reproduce', '--protocol', 'fewshot', '--methods', 'lpp',
                                          '--datasets', 'micro-pairs', '--seeds', '1..10'])
    assert args.seeds == list(range(1, 11))
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(['reproduce', '--protocol', 'fewshot', '--methods', 'lpp',
                                       '--datasets', 'micro-pairs', '--seeds', '3..1'])
    capsys.readouterr()
