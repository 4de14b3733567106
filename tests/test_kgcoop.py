"""KgCoOp across notebooks (issue 21): its loss reaches the one training loop, ProGrad's rule wraps
it (`--rule prograd`), a stopped run resumes to the uninterrupted numbers, and the rest of the kit
(registry, demo, speed harness) finds it through its entry alone."""
import functools, json
import pytest, torch
import torch.nn.functional as F
from vlprompt import bench, cli, micro, speed, train
from vlprompt.clip import load_clip, zeroshot_weights
from vlprompt.methods.coop import CoOp
from vlprompt.methods.kgcoop import KgCoOp, kgcoop_loss
from vlprompt.methods.prograd import ProGradRule

@pytest.fixture(scope='module')
def world():
    clip = load_clip('micro', device='cpu')
    task = micro.get_task('micro-pairs')
    feats, labels = micro.split_features(clip, task, 'train')
    return clip, task, feats[:48], labels[:48]

def _grad(module, x, y, rule=train.cross_entropy_rule):
    module.ctx.grad = None
    rule(module, x, y)
    return module.ctx.grad.clone()

def test_the_term_is_half_lambda_times_the_mean_squared_distance():
    g = torch.Generator().manual_seed(3)
    t, h = torch.randn(7, 32, generator=g), torch.randn(7, 32, generator=g)
    tn, hn = F.normalize(t, dim=-1), F.normalize(h, dim=-1)
    for w in (0.5, 8.0):
        want = w / 2 * (tn - hn).pow(2).sum(-1).mean()
        torch.testing.assert_close(kgcoop_loss(t, h, w), want, rtol=1e-5, atol=1e-6)
        assert kgcoop_loss(t, h, w) > 0.1  # random features are far apart: not a vacuous check

def test_lambda_zero_is_coops_gradient_bit_for_bit(world):
    clip, task, x, y = world
    coop = CoOp(clip, task.classnames, ctx_init='a photo of a')
    kg = KgCoOp(clip, task.classnames, task.template, w=0.0)
    assert torch.equal(_grad(kg, x, y), _grad(coop, x, y))
    # and the method's loss is what the default rule (and ProGrad's domain loss) backpropagates
    kg8 = KgCoOp(clip, task.classnames, 'a photo of a {}, a type of shape.', w=8.0)
    loss, logits = train.method_loss(kg8, x, y)
    term = kgcoop_loss(kg8.text_features(), kg8.hand_features, 8.0)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y) + term)
    assert term.item() > 1e-3

def test_no_pull_at_init_when_the_template_is_the_init_phrase(world):
    clip, task, x, y = world
    def norm(template):
        m = KgCoOp(clip, task.classnames, template, w=8.0)
        g, = torch.autograd.grad(kgcoop_loss(m.text_features(), m.hand_features, m.w), [m.ctx])
        return g.norm().item()
    ce = _grad(CoOp(clip, task.classnames, ctx_init='a photo of a'), x, y).norm().item()
    same, other = norm('a photo of a {}.'), norm('a photo of a {}, a type of shape.')
    assert same < 1e-3 * ce and other > 100 * same

def test_prograd_takes_kgcoops_loss_as_its_domain_loss(world):
    clip, task, x, y = world
    kg = KgCoOp(clip, task.classnames, 'a photo of a {}, a type of shape.', w=8.0)
    teacher = zeroshot_weights(clip, task.classnames, task.template)
    rule = ProGradRule(teacher, clip.model.logit_scale.exp().item(), lam=0.0)
    torch.testing.assert_close(_grad(kg, x, y, rule), _grad(kg, x, y), rtol=1e-5, atol=1e-7)

def test_kgcoop_with_the_prograd_rule_trains_from_the_cli_and_gets_its_own_row(tmp_path, capsys):
    out = tmp_path/'runs'/'kg'
    cli.main(['train', '--method', 'kgcoop', '--rule', 'prograd', '--protocol', 'base2new',
              '--dataset', 'micro-pairs', '--shots', '2', '--set', 'epochs=2', 'lam=0.5', 'w=4',
              '--out', str(out)])
    m = json.loads((out/'metrics.json').read_text())
    assert m['settings']['rule'] == 'prograd'
    assert {k: m['settings']['method_options'][k] for k in ('lam', 'w', 'n_ctx')} == dict(
        lam=0.5, w=4.0, n_ctx=4)
    assert 0 <= m['conflict_fraction'] <= 1 and 0 < m['base'] <= 100 and 0 < m['new'] <= 100
    assert 0.5 < m['hand_cosine'] <= 1  # the method's own metric reaches metrics.json
    capsys.readouterr()
    cli.main(['table', str(tmp_path/'runs')])
    row = next(l for l in capsys.readouterr().out.splitlines() if '| kgcoop' in l)
    assert 'rule=prograd' in row and row.rstrip(' |').endswith('—')  # no paper has this row

@pytest.mark.parametrize('rule', [None, 'prograd'])
def test_a_stopped_run_resumes_to_the_uninterrupted_numbers(tmp_path, monkeypatch, rule):
    s = bench.run_settings('kgcoop', 'base2new', 'micro-pairs', 4, 1, train=dict(epochs=5),
                           rule=rule)
    straight = bench.run(s, tmp_path/'straight', progress=False)
    stopped = tmp_path/'stopped'
    with monkeypatch.context() as mp:  # the machine dies after epoch 2 (the checkpoint stays)
        mp.setattr(train, 'fit', functools.partial(train.fit, stop_after=2))
        bench.run(s, stopped, progress=False)
    assert torch.load(stopped/'checkpoint.pt', weights_only=True)['epoch'] == 1
    (stopped/'metrics.json').unlink()  # unfinished, as a killed run leaves it
    resumed = bench.run(s, stopped, progress=False)
    for k in ('base', 'new', 'hm', 'hand_cosine'): assert resumed[k] == straight[k], k
    assert torch.load(stopped/'checkpoint.pt', weights_only=True)['epoch'] == 4

def test_the_entry_reaches_the_demo_and_the_speed_harness():
    assert 'kgcoop' in cli.demo_methods() and 'kgcoop' in speed.trainable_methods()
    clip = speed.bench_clip('micro')
    module, rule, s = speed.bench_method('kgcoop', clip, speed.bench_classnames(clip, 6), 'micro')
    assert type(module).__name__ == 'KgCoOp' and s['method_options']['w'] == 8.0
    g = torch.Generator().manual_seed(0)
    with torch.no_grad(): module.ctx.add_(0.05 * torch.randn(module.ctx.shape, generator=g))
    images, labels = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 5])
    with torch.no_grad(): features = speed.image_features(clip, images)
    fast = [g.clone() for g in speed.fast_gradients(module, rule, features, labels)]
    reference = speed.reference_gradients(module, rule, images, labels, clip)
    scale = max(1.0, reference[0].abs().max().item())  # as 50_speed compares the two paths
    torch.testing.assert_close(fast[0], reference[0], rtol=1e-4, atol=1e-5 * scale)
    assert fast[0].abs().sum() > 0
