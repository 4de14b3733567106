"MaPLe (vlprompt.methods.maple) with the shared encoders, the training loop, ProGrad's rule and the bench's config shape."
from contextlib import nullcontext
import open_clip, pytest, torch
import torch.nn.functional as F
import vlprompt.clip
from vlprompt.clip import (LoadedCLIP, VLPromptError, clip_logits, encode_image_prompted, encode_text_prompted, load_clip,
                           zeroshot_weights)
from vlprompt.methods.maple import BENCH_CONFIGS, BENCH_METHODS, MaPLe, prompt_layout
from vlprompt.methods.prograd import ProGradRule
from vlprompt.micro import get_task, micro_preprocess
from vlprompt.train import TrainConfig, TrainSet, augment_micro, cross_entropy_rule, fit, learnable_state

@pytest.fixture(scope='module')
def clip(): return load_clip('micro', device='cpu')

@pytest.fixture(scope='module')
def names(): return get_task('micro-pairs').classnames[:8]

@pytest.fixture(scope='module')
def images(): return torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))

@pytest.fixture(scope='module')
def vitb():
    model = open_clip.create_model('ViT-B-16', pretrained=None).eval().requires_grad_(False)
    return LoadedCLIP(model, open_clip.get_tokenizer('ViT-B-16'), None, 'ViT-B-16')

reference_path = getattr(vlprompt.clip, 'reference_path', nullcontext)  # text blocks run as modules (hooks see them)

def n_learnable(m): return sum(p.numel() for p in m.parameters() if p.requires_grad)

def block_inputs(blocks):
    seen, handles = [], []
    for b in blocks: handles.append(b.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach())))
    return seen, handles

def test_vit_b16_learns_3555072_numbers_and_the_ablations_their_shapes(vitb):
    maple = MaPLe(vitb, ['dog', 'cat'], n_ctx=2, depth=9)
    assert n_learnable(maple) == 3_555_072
    shapes = {n: tuple(p.shape) for n, p in maple.named_parameters()}
    assert shapes['ctx'] == (2, 512) and shapes['text_prompts.7'] == (2, 512) and 'text_prompts.8' not in shapes
    assert shapes['couplings.0.weight'] == (768, 512) and shapes['couplings.8.bias'] == (768,) and 'couplings.9.weight' not in shapes
    assert n_learnable(MaPLe(vitb, ['dog'], n_ctx=2, depth=12, coupling=False)) == 12 * 2 * (512 + 768)  # IVLP
    assert n_learnable(MaPLe(vitb, ['dog'], n_ctx=8, depth=12, coupling=False, text='none')) == 12 * 8 * 768  # deep vision
    assert n_learnable(MaPLe(vitb, ['dog'], n_ctx=4, depth=12, coupling=False, vision='none')) == 12 * 4 * 512  # deep language
    with pytest.raises(VLPromptError, match='between 1 and 12'): MaPLe(vitb, ['dog'], depth=13)

@torch.no_grad()
def test_text_side_without_coupling_and_deep_prompts_is_zero_shot(clip, vitb, names):
    for bundle, classes in ((clip, names + ['big_green_star']), (vitb, ['golden retriever', 'airliner'])):
        m = MaPLe(bundle, classes, n_ctx=2, depth=1, coupling=False, text='shallow', vision='none')
        torch.testing.assert_close(m.ctx, bundle.model.token_embedding(bundle.tokenizer(['a photo']))[0, 1:3])  # context 'a photo'
        torch.testing.assert_close(m.text_features(), zeroshot_weights(bundle, classes, 'a photo of a {}.'), atol=1e-4, rtol=0)

@torch.no_grad()
def test_shallow_is_input_only_and_deep_prompts_are_replaced(clip, names, images):
    x = micro_preprocess(images)
    shallow, deep = MaPLe(clip, names, depth=1, seed=2), MaPLe(clip, names, depth=4, seed=2)
    v0 = shallow.couplings[0](shallow.ctx)
    torch.testing.assert_close(shallow.image_features(x), encode_image_prompted(clip.model, x, [v0], placement='append', normalize=True))
    torch.testing.assert_close(shallow.text_features(), encode_text_prompted(clip.model, shallow.token_embeds, shallow.eot, [shallow.ctx], normalize=True))
    assert (deep.image_features(x) - shallow.image_features(x)).abs().max() > 1e-3
    seen, handles = block_inputs(clip.model.visual.transformer.resblocks)
    t_seen, t_handles = block_inputs(clip.model.transformer.resblocks)
    try:
        with reference_path(): deep(x)
    finally:
        for h in handles + t_handles: h.remove()
    assert [s.shape[1] for s in seen] == [1 + 16 + 2] * 4  # constant: replaced, not accumulated
    assert len({s.shape[1] for s in t_seen}) == 1
    for i in range(1, 4):
        torch.testing.assert_close(seen[i][:, -2:], deep.couplings[i](deep.text_prompts[i - 1]).expand(6, -1, -1))
        torch.testing.assert_close(t_seen[i][:, 1:3], deep.text_prompts[i - 1].expand(len(names), -1, -1))

def test_fit_trains_couplings_through_the_image_encoder(clip, names, images):
    m = MaPLe(clip, names, depth=3, seed=1)
    before, frozen = learnable_state(m), {k: v.clone() for k, v in clip.model.state_dict().items()}
    data = TrainSet(images, torch.arange(6) % len(names), augment=augment_micro)
    fit(m, data, TrainConfig(epochs=2, batch_size=2, lr=0.01, warmup_epochs=0, seed=1), progress=False)
    after = learnable_state(m)
    assert set(after) == set(before) and all(not torch.equal(after[k], before[k]) for k in before if k.startswith('couplings.'))
    assert all(torch.equal(v, frozen[k]) for k, v in clip.model.state_dict().items())

def test_for_classes_copies_every_learned_tensor(clip, names):
    m = MaPLe(clip, names[:4], depth=3, coupling=False, seed=1)
    with torch.no_grad():
        for p in m.parameters(): p.add_(0.1)
    other = m.for_classes(names[4:] + ['green ring'])
    assert other.text_features().shape[0] == 5 and other.depth == 3 and not other.coupled
    for (n, a), (_, b) in zip(m.named_parameters(), other.named_parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), n

@pytest.mark.parametrize('kwargs,message', [
    (dict(depth=5), 'depth J must be between 1 and 4 (micro has 4 layers in its text encoder and 4 layers in its vision encoder), not 5'),
    (dict(depth=0), 'depth J must be between 1 and 4'),
    (dict(n_ctx=0, depth=3), 'n_ctx (the prompt length) must be'),
    (dict(text='none', depth=3), 'coupling=False'),
    (dict(text='shallow', depth=3), "use text='deep'"),
    (dict(vision='all', depth=3), "vision must be 'deep', 'shallow' or 'none'"),
    (dict(text='none', vision='none', coupling=False), 'nothing to learn'),
])
def test_errors_say_what_to_change(clip, names, kwargs, message):
    with pytest.raises(VLPromptError) as e: MaPLe(clip, names, **kwargs)
    assert message in str(e.value)

def test_overflowing_class_name_is_named_with_its_excess(clip):
    long = 'a ' * 26 + 'blue ring'  # 4 + 26 + 2 + '.' + [SOS] + [EOS] = 35 tokens > 32
    with pytest.raises(VLPromptError) as e: MaPLe(clip, ['red star', long], depth=3)
    assert repr(long) in str(e.value) and 'overflows by 3' in str(e.value)
    ids, from_words = prompt_layout(clip, ['red star'], n_ctx=6)
    assert not from_words and clip.tokenizer.decode(ids[0, 1:8].tolist()).split() == ['x'] * 6 + ['red']

def test_prograd_rule_wraps_maple_with_an_image_teacher(clip, names, images):
    "ProGrad's teacher needs un-prompted image features of the batch; until ProGradRule takes an image encoder, wrap it."
    class ImageTeacher(ProGradRule):
        def losses(self, method, x, y):
            logits = method(x)
            with torch.no_grad(): teacher = clip_logits(clip.model.encode_image(x), self.teacher_weights, self.logit_scale)
            return F.cross_entropy(logits, y), F.kl_div(F.log_softmax(logits, -1), F.log_softmax(teacher, -1), log_target=True, reduction='batchmean')
    x, y = micro_preprocess(images), torch.arange(6) % len(names)
    teacher = zeroshot_weights(clip, names, 'a photo of a {}.')
    m = MaPLe(clip, names, depth=3, seed=3)
    cross_entropy_rule(m, x, y); g_ce = [p.grad.clone() for p in m.parameters()]; m.zero_grad(set_to_none=True)
    ImageTeacher(teacher, clip.model.logit_scale.exp().item(), lam=0.0)(m, x, y)
    for p, g in zip(m.parameters(), g_ce): torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-4)

def test_bench_entries_resolve_to_modules_and_train_configs(clip, vitb):
    assert set(BENCH_METHODS) == {'maple', 'ivlp', 'vpt_deep_clip', 'language_deep'}
    assert {p for _, p in BENCH_CONFIGS} == {'base2new', 'fewshot', 'xd', 'dg'}
    for (name, protocol), cfg in BENCH_CONFIGS.items():
        assert cfg['source'] and set(cfg) <= {'source', 'train', 'method', 'epochs_by_shots', 'datasets', 'micro'}
        TrainConfig(**cfg['train'])
        options = {**cfg['method'], **cfg['micro'].get('method', {})}
        assert BENCH_METHODS[name](clip, ['red star', 'blue ring'], 'a photo of a {}.', seed=1, **options).needs_images
    paper = BENCH_CONFIGS[('maple', 'base2new')]
    assert paper['train'] == dict(optimizer='sgd', batch_size=4, lr=0.0035, epochs=5) and paper['method'] == dict(n_ctx=2, depth=9)
    xd = BENCH_CONFIGS[('maple', 'xd')]
    assert xd['train']['lr'] == 0.0026 and xd['train']['epochs'] == 2 and xd['method']['depth'] == 3
    assert n_learnable(BENCH_METHODS['maple'](vitb, ['dog'], 'a photo of a {}.', **paper['method'])) == 3_555_072
