"""PromptSRC (vlprompt.methods.promptsrc): its loss terms, the Gaussian prompt aggregation as a
callback of fit, IVLP as its zero setting, its entry, and ProGrad's rule around it (runs, resumes)."""
import json, math, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from vlprompt import bench
from vlprompt.clip import VLPromptError, image_features, load_clip, zeroshot_weights
from vlprompt.methods.maple import MaPLe
from vlprompt.methods.promptsrc import (BENCH_CONFIGS, PROMPTSRC_TEMPLATES, PromptAggregation,
                                        PromptSRC, gaussian_weights, scl_losses)
from vlprompt.micro import PAIR_TEMPLATES, get_task
from vlprompt.train import (Callback, TrainConfig, TrainSet, augment_micro, cross_entropy_rule,
                            fit, learnable_state)

VLPROMPT = str(Path(sys.executable).parent/'vlprompt')
ZERO = dict(text_weight=0.0, image_weight=0.0, kl_weight=0.0, aggregate=False)

@pytest.fixture(scope='module')
def clip(): return load_clip('micro', device='cpu')

@pytest.fixture(scope='module')
def names(): return get_task('micro-pairs').classnames[:8]

@pytest.fixture(scope='module')
def few(names):
    g = torch.Generator().manual_seed(0)
    return TrainSet(torch.rand(24, 3, 32, 32, generator=g), torch.randint(len(names), (24, ), generator=g),
                    augment=augment_micro)

CFG = TrainConfig(optimizer='sgd', batch_size=8, lr=0.0025, epochs=4, seed=5)

class Record(Callback):
    "Each epoch's learnable tensors, before the aggregation (order 80) touches the last one."
    order = 70
    def __init__(self): self.states = []
    def epoch_end(self, s): self.states.append(learnable_state(s.method))

def ivlp(clip, names, seed=1): return MaPLe(clip, names, n_ctx=4, depth=3, coupling=False, seed=seed)

def test_gaussian_weights_are_the_normal_density_at_epochs_1_to_E_normalised():
    for E, mu, sigma in ((20, 15, 1), (20, 6, 10), (50, 30, 30), (50, 45, 5), (3, 0.5, 0.2)):
        dens = [math.exp(-0.5 * ((e - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
                for e in range(1, E + 1)]
        want = torch.tensor([d / sum(dens) for d in dens], dtype=torch.float64)
        got = gaussian_weights(E, mu, sigma)
        assert got.shape == (E, ) and torch.allclose(got, want, rtol=1e-12, atol=1e-15)
    w = gaussian_weights(20, 15, 1)
    assert w.argmax().item() == 14 and w[12:17].sum() > 0.99  # epoch 15 (1-based) carries the most

def test_scl_losses_follow_the_official_reductions():
    g = torch.Generator().manual_seed(1)
    N, K, D = 3, 5, 7
    t, bt, f, bf = (F.normalize(torch.randn(*s, generator=g), dim=-1) for s in ((K, D), (K, D), (N, D), (N, D)))
    z, bz = 30 * f @ t.t(), 30 * bf @ bt.t()
    terms = scl_losses(t, bt, f, bf, z, bz)
    assert torch.isclose(terms['text'], (t - bt).abs().mean()) and torch.isclose(terms['image'], (f - bf).abs().mean())
    p, logp, logq = bz.softmax(-1), bz.log_softmax(-1), z.log_softmax(-1)
    assert torch.isclose(terms['kl'], (p * (logp - logq)).sum() / (N * K), rtol=1e-5)  # KL(zs || prompted) / (N K)
    assert not torch.isclose(terms['kl'], (p * (logp - logq)).sum() / N)  # not batchmean

def test_frozen_text_features_are_the_raw_mean_over_the_templates(clip, names):
    assert len(PROMPTSRC_TEMPLATES) == 60 and len(set(PROMPTSRC_TEMPLATES)) == 60
    m = PromptSRC(clip, names, depth=3, templates='micro')
    assert torch.allclose(m.frozen_text(), zeroshot_weights(clip, names, PAIR_TEMPLATES, average='raw'))
    assert not torch.allclose(m.frozen_text(), zeroshot_weights(clip, names, PAIR_TEMPLATES), atol=1e-6)
    one = PromptSRC(clip, names, depth=3, templates='dataset', template='a {}.')
    assert torch.allclose(one.frozen_text(), zeroshot_weights(clip, names, 'a {}.'))

def test_weights_at_zero_without_aggregation_is_ivlp_exactly(clip, names, few):
    a, b = PromptSRC(clip, names, depth=3, templates='micro', seed=1, **ZERO), ivlp(clip, names)
    assert a.callbacks() == []
    fit(a, few, CFG, progress=False); fit(b, few, CFG, progress=False, rule=cross_entropy_rule)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys() and all(torch.equal(pa[n], pb[n]) for n in pa)
    # and the full loss trains to other prompts
    c = PromptSRC(clip, names, depth=3, templates='micro', seed=1, aggregate=False)
    fit(c, few, CFG, progress=False)
    assert not torch.equal(c.ctx, b.ctx)

def test_aggregation_with_a_one_hot_weight_returns_that_epochs_prompts(clip, names, few):
    for epoch in (0, 2):
        m, rec = ivlp(clip, names), Record()
        fit(m, few, CFG, progress=False, callbacks=[rec, PromptAggregation(weights=torch.eye(4)[epoch])])
        for n, p in m.named_parameters():
            assert torch.equal(p, rec.states[epoch][n]), (epoch, n)

def test_the_averaged_state_is_the_gaussian_weighted_mean(clip, names, few):
    m, rec = ivlp(clip, names), Record()
    fit(m, few, CFG, progress=False, callbacks=[rec, PromptAggregation(2.5, 1.0)])
    w = gaussian_weights(4, 2.5, 1.0)
    for n, p in m.named_parameters():
        want = sum(w[e].item() * rec.states[e][n] for e in range(4))
        assert torch.allclose(p, want, atol=1e-7) and not torch.equal(p, rec.states[-1][n])
    src = PromptSRC(clip, names, depth=3, templates='micro', gpa_mean=2.5, gpa_std=1.0)
    assert [type(cb) for cb in src.callbacks()] == [PromptAggregation]

def test_the_aggregation_resumes_exactly(clip, names, few, tmp_path):
    straight = ivlp(clip, names)
    fit(straight, few, CFG, progress=False, callbacks=[PromptAggregation(2.5, 1.0)])
    fit(ivlp(clip, names), few, CFG, out=tmp_path, progress=False, stop_after=2, callbacks=[PromptAggregation(2.5, 1.0)])
    resumed = ivlp(clip, names)
    fit(resumed, few, CFG, out=tmp_path, progress=False, callbacks=[PromptAggregation(2.5, 1.0)])
    for (n, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()): assert torch.equal(a, b), n
    with pytest.raises(VLPromptError, match='epoch weights'):
        fit(ivlp(clip, names), few, CFG, progress=False, callbacks=[PromptAggregation(weights=torch.ones(3) / 3)])

def test_the_frozen_clip_stays_frozen_and_its_image_features_are_the_plain_ones(clip, names, few):
    m = PromptSRC(clip, names, depth=3, templates='micro', seed=2)
    before = {n: p.clone() for n, p in clip.model.state_dict().items()}
    x = augment_micro(few.inputs[:6])
    seen = []
    import vlprompt.methods.promptsrc as mod
    real = mod.image_features
    try:
        mod.image_features = lambda c, im, **kw: seen.append(im) or real(c, im, **kw)
        loss, _ = m.loss(x, few.labels[:6])
    finally: mod.image_features = real
    loss.backward()
    assert len(seen) == 1 and seen[0] is x  # the frozen encoder sees the step's own augmented batch
    assert all(torch.equal(p, before[n]) for n, p in clip.model.state_dict().items())
    assert all(p.grad is None for p in clip.model.parameters())
    assert all(p.grad is not None for p in m.parameters())

def test_the_entry_and_its_configs():
    e = bench.ENTRIES['promptsrc']
    assert e.paper['base2new'] == (84.26, 76.10, 79.97) and set(e.configs) == {'base2new', 'fewshot', 'xd', 'dg'}
    s = bench.run_settings('promptsrc', 'base2new', 'oxford_pets', 16, 1)
    assert s['train']['lr'] == 0.0025 and s['train']['batch_size'] == 4 and s['train']['epochs'] == 20
    assert s['method_options'] == dict(n_ctx=4, depth=9, gpa_mean=15.0, gpa_std=1.0, text_weight=25.0,
                                       image_weight=10.0, kl_weight=1.0)
    low = bench.run_settings('promptsrc', 'base2new', 'micro-pairs', 16, 1, method_options=dict(text_weight=5.0))
    assert low['method_options']['text_weight'] == 5.0  # `--set text_weight=5` reaches the module
    assert bench.run_settings('promptsrc', 'fewshot', 'dtd', 16, 1)['method_options']['gpa_mean'] == 45.0
    assert bench.run_settings('promptsrc', 'fewshot', 'caltech101', 16, 1)['method_options']['gpa_std'] == 30.0
    xd = bench.run_settings('promptsrc', 'xd', 'imagenet', 16, 1)['method_options']
    assert (xd['depth'], xd['gpa_mean'], xd['gpa_std']) == (3, 6.0, 10.0)
    micro = bench.run_settings('promptsrc', 'base2new', 'micro-pairs', 16, 1)['method_options']
    assert micro['depth'] == 3 and micro['templates'] == 'micro'
    assert all(c['source'] for c in BENCH_CONFIGS.values())

@pytest.mark.parametrize('options, words', [(dict(gpa_std=0.0), 'gpa_std'), (dict(text_weight=-1.0), 'text_weight'),
                                            (dict(templates='cifar'), 'templates must be')])
def test_bad_options_are_one_sentence(clip, names, options, words):
    with pytest.raises(VLPromptError, match=words): PromptSRC(clip, names, depth=3, **options)

def test_bad_option_from_the_cli_exits_2_and_writes_nothing(tmp_path):
    res = subprocess.run([VLPROMPT, 'train', '--method', 'promptsrc', '--dataset', 'micro-pairs', '--protocol',
                          'base2new', '--set', 'gpa_std=0', '--out', str(tmp_path/'run')], capture_output=True, text=True)
    assert res.returncode == 2 and 'gpa_std' in res.stderr and 'Traceback' not in res.stderr
    assert not (tmp_path/'run').exists()

def test_prograd_around_promptsrc_trains_with_its_loss_and_resumes_exactly(tmp_path):
    """`--rule prograd` around promptsrc: the rule's domain loss is PromptSRC's loss; SIGKILL in the
    middle of `vlprompt train`, run it again: the metrics of a run never interrupted."""
    args = ['train', '--method', 'promptsrc', '--rule', 'prograd', '--dataset', 'micro-pairs', '--protocol',
            'base2new', '--shots', 4, '--seed', 2, '--set', 'epochs=8', 'gpa_mean=5', 'gpa_std=2', 'lam=0.8']
    cli = lambda *extra: subprocess.run([VLPROMPT, *map(str, args), *extra], capture_output=True, text=True)
    res = cli('--out', tmp_path/'straight')
    assert res.returncode == 0, res.stderr
    straight = json.loads((tmp_path/'straight'/'metrics.json').read_text())
    assert straight['settings']['rule'] == 'prograd' and 0 <= straight['conflict_fraction'] <= 1
    killed = tmp_path/'killed'
    proc = subprocess.Popen([VLPROMPT, *map(str, args), '--out', str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed/'checkpoint.pt').exists() and time.time() < deadline: time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (killed/'metrics.json').exists(), 'the run finished before it could be killed'
    ckpt = torch.load(killed/'checkpoint.pt', weights_only=True)
    assert ckpt['epoch'] < 7 and 'PromptAggregation' in ckpt['callbacks']
    res = cli('--out', killed)
    assert res.returncode == 0, res.stderr
    resumed = json.loads((killed/'metrics.json').read_text())
    assert (resumed['base'], resumed['new'], resumed['hm']) == (straight['base'], straight['new'], straight['hm'])

def test_prograd_with_lambda_0_leaves_promptsrcs_own_gradient(clip, names, few):
    from vlprompt.methods.prograd import ProGradRule
    m = PromptSRC(clip, names, depth=3, templates='micro', seed=3)
    x, y = augment_micro(few.inputs[:8]), few.labels[:8]
    cross_entropy_rule(m, x, y)
    own = [p.grad.clone() for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    ProGradRule(zeroshot_weights(clip, names), clip.model.logit_scale.exp().item(), lam=0.0,
                image_encoder=lambda im: image_features(clip, im))(m, x, y)
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(m.parameters(), own))
    plain = [p.grad.clone() for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    F.cross_entropy(m(x), y).backward()  # without the agreement terms the gradient differs
    assert any(not torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(m.parameters(), plain))
