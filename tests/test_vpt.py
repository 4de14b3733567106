"VPT / SPT across notebooks: the shared prompted encoder (00_clip) on timm and open_clip ViTs, SPT's init and NMI, training through fit (03_train)."
import math
import pytest
import torch
import timm
from vlprompt.clip import VLPromptError, encode_image_prompted, load_clip
from vlprompt.methods.vpt import (BENCH_CONFIGS, BENCH_METHODS, SPT_STRATEGIES, VPT, kmeans, layer_nmi, layer_tokens, lloyd_step,
                                  micro_task_data, nmi_from_joint, pool_windows, prompt_patch_nmi, token_prototypes, vit_shape,
                                  xavier_bound)
from vlprompt.micro import micro_preprocess
from vlprompt.train import TrainConfig, TrainSet, augment_micro, evaluate, fit

@pytest.fixture(scope='module')
def clip(): return load_clip('micro', device='cpu')

@pytest.fixture(scope='module')
def data(): return micro_task_data('micro-pairs-noise', shots=2)

def test_timm_vit_zero_prompts_and_deep_length():
    model = timm.create_model('vit_base_patch16_224', pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        reference = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(encode_image_prompted(model, x, [torch.zeros(0, 768)]), reference, atol=1e-5, rtol=0)
        prompts = [torch.randn(5, 768) for _ in range(12)]
        _, inputs = encode_image_prompted(model, x, prompts, return_layer_inputs=True)
    assert [t.shape[1] for t in inputs] == [1 + 5 + 196] * 12
    assert all(torch.equal(inputs[i][0, 1:6], prompts[i]) for i in range(12))

def test_open_clip_unprompted_paths_agree(clip):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        plain = encode_image_prompted(clip.model, x)
        looped, inputs = encode_image_prompted(clip.model, x, return_layer_inputs=True)
    torch.testing.assert_close(looped, plain, atol=1e-5, rtol=0)
    assert [t.shape for t in inputs] == [torch.Size([3, 17, 128])] * 4

def test_xavier_bound_and_shapes(clip):
    assert math.isclose(xavier_bound(16, 768), math.sqrt(6 / 1536))
    assert vit_shape(clip.model) == dict(width=128, patch=8, layers=4, patches=16, prefix=1, features=128)

def test_kmeans_fixed_point_monotone_deterministic():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(300, 8, generator=g) + 6 * torch.randn(1, 8, generator=g) for _ in range(6)])
    res = kmeans(x, 6, seed=2, tol=0)
    assert res.converged
    torch.testing.assert_close(lloyd_step(x.double(), res.centres), res.centres, atol=1e-12, rtol=0)
    assert all(b <= a * (1 + 1e-12) for a, b in zip(res.inertia, res.inertia[1:]))
    assert torch.equal(kmeans(x, 6, seed=2, tol=0).centres, res.centres)

def test_pooling_official_windows():
    seq = torch.arange(16.).view(1, 16, 1)
    assert pool_windows(seq, 4, 'mean')[0, :, 0].tolist() == [2., 7., 12., 15.]
    assert pool_windows(seq, 5, 'max')[0, :, 0].tolist() == [3., 7., 11., 15., 15.]
    with pytest.raises(VLPromptError, match='at least 20 tokens'): pool_windows(seq, 20)

def test_nmi_constructed():
    assert abs(nmi_from_joint(torch.eye(5, dtype=torch.float64) / 5).item() - 1) < 1e-12
    assert abs(nmi_from_joint(torch.outer(torch.rand(4, dtype=torch.float64), torch.rand(7, dtype=torch.float64))).item()) < 1e-12
    simplex = 20 * (torch.eye(6) - 1 / 6)
    assert prompt_patch_nmi(simplex, simplex[None]).item() > 1 - 1e-6
    assert abs(prompt_patch_nmi(torch.zeros(3, 6), simplex[None]).item()) < 1e-12  # every sigma = 1/2: a uniform joint
    v = prompt_patch_nmi(3 * torch.randn(4, 16), 3 * torch.randn(10, 20, 16))
    assert ((v >= -1e-12) & (v <= 1 + 1e-12)).all()

def test_spt_prepare_then_fit(clip, data):
    train = micro_preprocess(data['train'])
    for strategy in SPT_STRATEGIES:
        m = VPT(clip, data['task'].classnames, n_prompts=4, deep=True, init=strategy, seed=1)
        spent = m.prepare(train)
        assert m.prepared and set(spent) == {'capture_s', 'build_s'}
    tokens = layer_tokens(clip.model, train)
    m = VPT(clip, data['task'].classnames, n_prompts=4, deep=True, head='linear', init='kmeans', seed=1)
    m.prepare(train, tol=0)  # layer l's prompts are the K-means centres of layer l's tokens (seed 1000 * seed + l)
    torch.testing.assert_close(m.prompts[2].detach(), token_prototypes(tokens[2], 4, 'kmeans', seed=1002, tol=0))
    before = m.prompts.detach().clone()
    history = fit(m, TrainSet(data['train'], data['train_labels'], augment=augment_micro),
                  TrainConfig(epochs=1, batch_size=32, optimizer='adamw', lr=1e-2, seed=1), progress=False)
    assert len(history) == 1 and not torch.equal(before, m.prompts.detach())
    assert 0 <= evaluate(m, micro_preprocess(data['test'][:64]), data['test_labels'][:64]) <= 100
    assert all(0 <= v <= 1 for v in layer_nmi(m, train[:8]))

def test_zeroshot_head_moves_to_new_classes(clip, data):
    m = VPT(clip, data['task'].classnames[:10], n_prompts=2, deep=False, seed=0)
    other = m.for_classes(data['task'].classnames[10:14])
    assert torch.equal(other.prompts, m.prompts) and other(micro_preprocess(data['test'][:3])).shape == (3, 4)

def test_bench_entries(clip):
    names = micro_task_data('micro-pairs-noise', 2)['task'].classnames[:6]
    for (name, protocol), cfg in BENCH_CONFIGS.items():
        assert name in BENCH_METHODS and protocol in ('fewshot', 'base2new', 'xd', 'dg') and cfg['source']
        TrainConfig(**cfg['train']); TrainConfig(**{**cfg['train'], **cfg['micro'].get('train', {})})
        m = BENCH_METHODS[name](clip, names, 'a photo of a {}.', seed=0, **{**cfg['method'], **cfg['micro'].get('method', {})})
        assert m.needs_images and hasattr(m, 'prepare')


def test_vpt_deep_on_clip_is_maple_without_text_prompts():
    "One forward path: VPT-deep with prompts appended after the patches equals MaPLe's deep-vision ablation with the same prompts."
    import torch
    from vlprompt.clip import load_clip
    from vlprompt.methods.maple import MaPLe
    from vlprompt.methods.vpt import VPT
    clip = load_clip('micro', device='cpu')
    names = ['red star', 'blue circle', 'green ring']
    vpt = VPT(clip, names, n_prompts=2, deep=True, placement='append', init='normal', head='zeroshot', template='a photo of a {}.', seed=3)
    maple = MaPLe(clip, names, n_ctx=2, depth=4, coupling=False, text='none', vision='deep', seed=5)
    with torch.no_grad():
        for i, p in enumerate(maple.vision_prompts): p.copy_(vpt.prompts[i])
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad(): torch.testing.assert_close(vpt(images), maple(images), atol=1e-4, rtol=0)
