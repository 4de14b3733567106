"""CLIP-LoRA (issue 22): the split of open_clip's fused q, k, v projection, the low-rank update, the
LoRA-only and merged checkpoints, and a micro run that beats zero-shot CLIP on the base classes."""
import copy
import pytest, torch
import torch.nn.functional as F
from vlprompt import bench
from vlprompt.clip import load_clip, zeroshot_weights
from vlprompt import micro
from vlprompt.methods.clip_lora import (CLIPLoRA, clip_lora_setting, lora_delta, lora_linear,
                                        split_attention, split_qkv)
from vlprompt.clip import VLPromptError


@pytest.fixture(scope='module')
def clip(): return load_clip('micro', device='cpu')

@pytest.fixture(scope='module')
def task(): return micro.get_task('micro-pairs')

@pytest.fixture(scope='module')
def images(task):
    return micro.micro_preprocess(task.split('test')[0][:48])

def moved(lora, seed=0, std=0.05):
    "The module with every B (and A) moved from its start: a LoRA that changes CLIP."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.parameters(): p.add_(torch.randn(p.shape, generator=g) * std)
    return lora


@pytest.mark.parametrize('encoder', ['text', 'vision'])
def test_split_attention_equals_the_fused_one(clip, encoder):
    blocks = clip.model.transformer.resblocks if encoder == 'text' else clip.model.visual.transformer.resblocks
    g = torch.Generator().manual_seed(1)
    L = 11 if encoder == 'text' else 17
    mask = clip.model.attn_mask[:L, :L] if encoder == 'text' else None
    for block in blocks:
        h = torch.randn(3, L, block.attn.embed_dim, generator=g)
        fused = block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        torch.testing.assert_close(split_attention(block.attn, h, mask), fused, rtol=0, atol=1e-6)
    Ws, bs = split_qkv(blocks[0].attn)
    assert all(W._base is blocks[0].attn.in_proj_weight for W in Ws)  # views of the fused weight
    assert torch.equal(torch.cat(Ws), blocks[0].attn.in_proj_weight)


def test_b_zero_leaves_clip_unchanged(clip, task, images):
    lora = CLIPLoRA(clip, task.classnames, task.template).eval()
    assert all(torch.count_nonzero(p) == 0 for n, p in lora.named_parameters() if n.endswith('_B'))
    with torch.no_grad():
        torch.testing.assert_close(lora.text_features(), zeroshot_weights(clip, task.classnames, task.template),
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(lora.image_features(images),
                                   F.normalize(clip.model.encode_image(images), dim=-1), rtol=0, atol=1e-6)
    moved(lora)
    with torch.no_grad():  # and a moved B does change it: the check above can fail
        assert (lora.image_features(images) - F.normalize(clip.model.encode_image(images), dim=-1)).abs().max() > 1e-3


@pytest.mark.parametrize('r, encoders', [(2, 'both'), (1, 'both'), (4, 'text'), (3, 'vision')])
def test_trainable_count_is_2rd_per_projection(clip, task, r, encoders):
    lora = CLIPLoRA(clip, task.classnames, r=r, encoders=encoders)
    m = clip.model
    layers = []
    if encoders in ('both', 'text'): layers += [b.attn.embed_dim for b in m.transformer.resblocks]
    if encoders in ('both', 'vision'): layers += [b.attn.embed_dim for b in m.visual.transformer.resblocks]
    want = sum(2 * r * d * 3 for d in layers)  # 2 r d per projection, q k v, every layer
    assert sum(p.numel() for p in lora.parameters() if p.requires_grad) == want
    assert want == 6 * r * 128 * len(layers)


def test_only_lora_tensors_get_gradients(clip, task, images):
    lora = moved(CLIPLoRA(clip, task.classnames, task.template)).train()
    labels = torch.arange(len(images)) % len(task.classnames)
    F.cross_entropy(lora(images), labels).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.parameters())
    assert all(p.grad is None and not p.requires_grad for p in clip.model.parameters())
    named = [n for n, _ in lora.named_parameters()]
    assert len(named) == 6 * 8 and all(n.split('.')[-1] in ('q_A', 'q_B', 'k_A', 'k_B', 'v_A', 'v_B') for n in named)


def test_lora_linear_merges_and_drops_only_its_branch():
    g = torch.Generator().manual_seed(0)
    x, W, b = torch.randn(6, 10, generator=g), torch.randn(7, 10, generator=g), torch.randn(7, generator=g)
    A, B = torch.randn(2, 10, generator=g), torch.randn(7, 2, generator=g)
    torch.testing.assert_close(lora_delta(A, B, 1.0), (B @ A) / 2 ** 0.5)  # the official alpha / sqrt(r)
    torch.testing.assert_close(lora_linear(x, W, b, A, B, 1.0, 0.25, training=False), F.linear(x, W + lora_delta(A, B, 1.0), b))
    torch.testing.assert_close(lora_linear(x, W, b, A, torch.zeros(7, 2), 1.0, 0.25, training=True), F.linear(x, W, b))


def test_merged_model_equals_the_lora_model(clip, task, images, tmp_path):
    lora = moved(CLIPLoRA(clip, task.classnames, task.template)).eval()
    path = lora.save_merged(tmp_path/'merged.pt')
    merged = copy.deepcopy(clip.model)
    merged.load_state_dict(torch.load(path, weights_only=True))
    ids = clip.tokenizer([task.template.format(c) for c in task.classnames])
    with torch.no_grad():
        torch.testing.assert_close(F.normalize(merged.encode_image(images), dim=-1), lora.image_features(images),
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(F.normalize(merged.encode_text(ids), dim=-1), lora.text_features(),
                                   rtol=0, atol=1e-5)
        # the shared CLIP is untouched, and differs from the merged one
        assert (merged.visual.transformer.resblocks[0].attn.in_proj_weight
                - clip.model.visual.transformer.resblocks[0].attn.in_proj_weight).abs().max() > 1e-4
    assert not list(tmp_path.glob('.*.tmp'))  # written atomically: no temporary file left


def test_saved_lora_reloads_and_reproduces_eval(clip, tmp_path):
    s = bench.run_settings('clip_lora', 'base2new', 'micro-pairs', 2, 1, train=dict(iterations=6))
    metrics = bench.run(s, tmp_path/'run', progress=False)
    from vlprompt.data import fewshot_splits, load_dataset, subsample_classes
    base = subsample_classes(fewshot_splits(load_dataset('micro-pairs'), 2, seed=1, cache_dir=None), 'base')
    # the run's trained LoRA, reloaded from its checkpoint through evaluate_run
    again = bench.evaluate_run(tmp_path/'run')
    assert again['base'] == pytest.approx(metrics['base'], abs=1e-9)
    # save_lora -> load_lora (weights_only) reproduces the accuracy of a trained module
    lora = moved(CLIPLoRA(clip, base.classnames, base.template), seed=3)
    path = lora.save_lora(tmp_path/'lora.pt')
    ckpt = torch.load(path, weights_only=True)
    assert ckpt['r'] == 2 and ckpt['alpha'] == 1.0 and set(ckpt['lora']) == {n for n, _ in lora.named_parameters()}
    fresh = CLIPLoRA(clip, base.classnames, base.template, seed=9).load_lora(path)
    assert bench.accuracy(clip, fresh, base) == bench.accuracy(clip, lora, base)
    assert bench.accuracy(clip, fresh, base) != bench.accuracy(clip, CLIPLoRA(clip, base.classnames, base.template), base)
    assert path.stat().st_size * 100 < sum(p.numel() * 4 for p in clip.model.parameters())
    with pytest.raises(VLPromptError, match='r: 2 there, 4 here'):
        CLIPLoRA(clip, base.classnames, r=4).load_lora(path)


def test_micro_run_beats_zero_shot_on_base():
    zs = bench.base_to_new('zeroshot')
    lora = bench.base_to_new('clip_lora')  # the micro schedule
    assert lora['base'] > zs['base'] + 5, (lora['base'], zs['base'])


def test_rank_slider_function_changes_with_r():
    r1 = clip_lora_setting(bench, r=1, iterations=8)
    r4 = clip_lora_setting(bench, r=4, iterations=8)
    assert (r1['r'], r4['r']) == (1, 4)
    assert r1['delta_norm'] > 0 and r4['delta_norm'] > 0 and r1['delta_norm'] != pytest.approx(r4['delta_norm'], rel=1e-3)


def test_iterations_schedule_counts_steps():
    from vlprompt.train import TrainConfig, TrainSet, fit, lr_at_step
    torch.manual_seed(0)
    x, y = torch.randn(1, 40, 8), torch.arange(40) % 4
    probe = torch.nn.Linear(8, 4)
    steps = []
    class Count:
        def after_step(self, s): steps.append(s.opt.param_groups[0]['lr'])
    cfg = TrainConfig(iterations=7, batch_size=16, optimizer='adamw', lr=1e-2, min_lr=1e-4, warmup_epochs=0)
    hist = fit(probe, TrainSet(x, y), cfg, progress=False, callbacks=[Count()])
    assert len(steps) == 7 and len(hist) == 3  # 3 steps an epoch: 3 + 3 + 1
    assert steps == [lr_at_step(cfg, t) for t in range(7)] and steps[0] == 1e-2 and steps[-1] > 1e-4
