"TaskRes, CLIP-Adapter, Tip-Adapter(-F) and the linear probe across notebooks: text-encoder calls, bench-style runs, configs, resume."
import json, pytest, torch
import vlprompt.clip as vclip
from vlprompt.bench import PROTOCOLS, dataset_features
from vlprompt.clip import VLPromptError, clip_logits, load_clip
from vlprompt.data import DATASETS, fewshot_splits, load_dataset, subsample_classes
from vlprompt.methods.taskres import BENCH_CONFIGS, BENCH_METHODS, TaskRes, TipAdapterF
from vlprompt.methods import zeroshot as _zeroshot
# the linear probe (10_zeroshot's entry) is tested beside this notebook's methods
BENCH_METHODS = {'linprobe': _zeroshot.BENCH_METHODS['linprobe'], **BENCH_METHODS}
BENCH_CONFIGS = {**{k: v for k, v in _zeroshot.BENCH_CONFIGS.items() if k[0] == 'linprobe'},
                 **BENCH_CONFIGS}
from vlprompt.methods.zeroshot import ZeroShotClassifier
from vlprompt.train import train_method
from vlprompt.train import TrainConfig, TrainSet, cross_entropy_rule, epochs_for_shots, evaluate, fit

@pytest.fixture(scope='module')
def clip(): return load_clip('micro', device='cpu')

@pytest.fixture(scope='module')
def b2n(clip):
    "micro-pairs, 16 shots, seed 1: base classes with 10 flipped views, val, and base / new test features."
    data = fewshot_splits(load_dataset('micro-pairs'), 16, seed=1, cache_dir=None)
    base, new = subsample_classes(data, 'base'), subsample_classes(data, 'new')
    return dict(base=base, new=new, train=dataset_features(clip, base, 'train', views=10, augment=True),
                plain=dataset_features(clip, base, 'train'), val=dataset_features(clip, base, 'val'),
                base_test=dataset_features(clip, base, 'test'), new_test=dataset_features(clip, new, 'test'))

class TextCalls:
    "Counts text-encoder runs two ways: calls of vlprompt.clip.encode_text_prompted and forwards of the text encoder's final LayerNorm (it runs once per encoding, on every path)."
    def __init__(self, clip, monkeypatch):
        self.calls, self.blocks = 0, 0
        inner = vclip.encode_text_prompted
        def counted(*a, **k):
            self.calls += 1
            return inner(*a, **k)
        monkeypatch.setattr(vclip, 'encode_text_prompted', counted)
        self.hook = clip.model.ln_final.register_forward_hook(lambda *a: setattr(self, 'blocks', self.blocks + 1))
    @property
    def total(self): return (self.calls, self.blocks)

def test_taskres_training_never_calls_the_text_encoder(clip, b2n, monkeypatch):
    counter = TextCalls(clip, monkeypatch)
    try:
        method = BENCH_METHODS['taskres'](clip, b2n['base'].classnames, b2n['base'].template, seed=1)
        at_init = counter.total
        assert at_init[0] >= 1 and at_init[1] >= 1  # the base is built once, through the shared text path
        cfg = TrainConfig(optimizer='adam', lr=2e-3, batch_size=256, epochs=200, weight_decay=5e-4, seed=1)
        history = train_method(method, *b2n['train'], *b2n['val'], cfg=cfg)
        assert len(history) == 200 and counter.total == at_init  # 200 epochs, not one text-encoder call
        assert method.task_residual.abs().sum() > 0  # it did learn
    finally: counter.hook.remove()
    zs = ZeroShotClassifier(clip, b2n['base'].classnames, b2n['base'].template)
    gain = evaluate(method, b2n['base_test'][0][0], b2n['base_test'][1]) - evaluate(zs, b2n['base_test'][0][0], b2n['base_test'][1])
    assert gain > 0.5, gain  # 16-shot TaskRes beats zero-shot on the trained classes

def test_taskres_with_zero_residual_or_alpha_is_zero_shot(clip, b2n):
    names, f = b2n['base'].classnames, b2n['base_test'][0][0]
    method = TaskRes(clip, names, b2n['base'].template)
    with torch.no_grad():
        torch.testing.assert_close(method(f), clip_logits(f, vclip.zeroshot_weights(clip, names, b2n['base'].template, average='raw'), float(clip.model.logit_scale.exp())))
        method.task_residual.normal_(generator=torch.Generator().manual_seed(0))
        method.alpha = 0.0
        assert torch.equal(method.classifier(), method.base)

def _micro_settings(name, protocol, epochs_cap):
    c = BENCH_CONFIGS.get((name, protocol)) or BENCH_CONFIGS[(name, 'fewshot')]
    train, options = dict(c.get('train', {})), dict(c.get('method', {}))
    rule = c.get('epochs_by_shots')
    if rule: train['epochs'] = rule(16) if callable(rule) else epochs_for_shots(16)
    train.update(c['micro']['train']); options.update(c['micro']['method'])
    train['epochs'] = min(train.get('epochs', 1), epochs_cap)
    return TrainConfig(**train, seed=1), options

@pytest.mark.parametrize('name', ['linprobe', 'clip_adapter', 'tip_adapter', 'tip_adapter_f', 'taskres'])
def test_bench_style_base_to_new_run(clip, b2n, name, monkeypatch):
    "Builder -> prepare / fit / calibrate on the base classes -> base accuracy and the rebuilt method on new classes."
    cfg, options = _micro_settings(name, 'base2new', epochs_cap=200 if name == 'taskres' else 5)
    base, new = b2n['base'], b2n['new']
    method = BENCH_METHODS[name](clip, base.classnames, base.template, seed=1, **options)
    train = b2n['train'] if getattr(method, 'train_augment', True) else b2n['plain']
    counter = TextCalls(clip, monkeypatch)
    try: train_method(method, *train, *b2n['val'], cfg=cfg)
    finally: counter.hook.remove()
    assert counter.total == (0, 0)  # no method runs the text encoder while it gets ready
    acc_base = evaluate(method, b2n['base_test'][0][0], b2n['base_test'][1])
    zs = ZeroShotClassifier(clip, base.classnames, base.template)
    zs_base = evaluate(zs, b2n['base_test'][0][0], b2n['base_test'][1])
    assert acc_base > zs_base, (acc_base, zs_base)  # every head learns the base classes (5 epochs: a little)
    if name == 'linprobe':
        assert method.fitted and method.search  # lam came from the val search
        with pytest.raises(VLPromptError, match='cannot classify'): method.for_classes(new.classnames)
        return
    acc_new = evaluate(method.for_classes(new.classnames), b2n['new_test'][0][0], b2n['new_test'][1])
    zs_new = evaluate(ZeroShotClassifier(clip, new.classnames, new.template), b2n['new_test'][0][0], b2n['new_test'][1])
    if name in ('taskres', 'tip_adapter', 'tip_adapter_f'): assert acc_new == zs_new  # nothing carried over to new names
    else: assert acc_new > 30, acc_new  # CLIP-Adapter's residual keeps new classes well above chance
    if name.startswith('tip'):
        assert method.search_result is not None and len(method.cache_keys) == 16 * 32

def test_tip_adapter_f_resumes_after_prepare(clip, b2n, tmp_path):
    "The keys exist only after prepare; a checkpointed run resumed after prepare equals an uninterrupted one."
    cfg = TrainConfig(optimizer='adamw', lr=1e-3, batch_size=256, epochs=6, weight_decay=0.01, warmup_epochs=0, seed=1)
    names, template = b2n['base'].classnames, b2n['base'].template
    whole = TipAdapterF(clip, names, template).prepare(*b2n['train'])
    fit(whole, TrainSet(*b2n['train']), cfg, progress=False)
    first = TipAdapterF(clip, names, template).prepare(*b2n['train'])
    fit(first, TrainSet(*b2n['train']), cfg, out=tmp_path, progress=False, stop_after=3)
    again, steps = TipAdapterF(clip, names, template).prepare(*b2n['train']), []
    def counted(method, x, y):
        steps.append(1)
        return cross_entropy_rule(method, x, y)
    fit(again, TrainSet(*b2n['train']), cfg, out=tmp_path, progress=False, rule=counted)
    assert len(steps) == 3 * 2  # resumed at epoch 3: 3 epochs of 2 batches left
    torch.testing.assert_close(again.cache_keys, whole.cache_keys, atol=0, rtol=0)
    assert not torch.equal(whole.cache_keys.detach(), TipAdapterF(clip, names, template).prepare(*b2n['train']).cache_keys.detach())

def test_bench_configs_are_well_formed(clip):
    "Every entry has the bench.CONFIGS shape, valid TrainConfig fields, known datasets, and options the builder accepts."
    assert set(BENCH_METHODS) == {'linprobe', 'clip_adapter', 'tip_adapter', 'tip_adapter_f', 'taskres'}
    names = ['red circle', 'blue star']
    for (name, protocol), c in BENCH_CONFIGS.items():
        assert name in BENCH_METHODS and protocol in PROTOCOLS and c['source']
        overrides = [c] + [c['micro']] + list(c.get('datasets', {}).values())
        assert set(c.get('datasets', {})) <= set(DATASETS)
        for o in overrides:
            TrainConfig(**{**c.get('train', {}), **o.get('train', {})})
            options = {**c.get('method', {}), **o.get('method', {})}
            json.dumps(options)  # bench writes the options into config.json
            BENCH_METHODS[name](clip, names, 'a photo of a {}.', seed=1, **options)
    assert BENCH_CONFIGS[('taskres', 'fewshot')]['datasets']['oxford_flowers']['method']['alpha'] == 1.0
    assert BENCH_CONFIGS[('tip_adapter_f', 'fewshot')]['datasets']['eurosat']['train']['epochs'] == 100
    assert [BENCH_CONFIGS[('taskres', 'fewshot')]['epochs_by_shots'](k) for k in (1, 4, 8, 16)] == [100, 100, 200, 200]
