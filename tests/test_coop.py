"CoOp (vlprompt.methods.coop) on the micro CLIP: zero-shot equivalence, layouts, base -> new transfer, errors, gradients."
import pytest, torch
import torch.nn.functional as F
from vlprompt.clip import VLPromptError, clip_logits, eot_positions, load_clip, zeroshot_weights
from vlprompt.methods.coop import CoOp
from vlprompt.micro import get_task
from vlprompt.train import TrainConfig, TrainSet, fit, learnable_state

@pytest.fixture(scope='module')
def clip(): return load_clip('micro', device='cpu')

@pytest.fixture(scope='module')
def names(): return get_task('micro-pairs').classnames[:8]

def unit(n, d=128, seed=0): return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)

@torch.no_grad()
def test_untrained_from_a_photo_of_a_is_zero_shot_clip(clip, names):
    names = names + ['big_green_star']  # underscores become spaces, as in zeroshot_weights
    coop = CoOp(clip, names, ctx_init='a photo of a')
    assert coop.n_ctx == 4 and coop.ctx.shape == (4, 128)
    zs = zeroshot_weights(clip, names, 'a photo of a {}.')
    torch.testing.assert_close(coop.text_features(), zs, atol=1e-5, rtol=0)
    f, scale = unit(16), clip.model.logit_scale.exp()
    torch.testing.assert_close(coop(f), clip_logits(f, zs, scale), atol=1e-4, rtol=0)

@torch.no_grad()
@pytest.mark.parametrize('position,text', [('end', 'a photo of a {}.'), ('middle', 'a photo {} of a.'), ('front', '{} a photo of a.')])
def test_layouts_are_the_token_sequences_they_claim(clip, position, text):
    "With the context initialised from words, each layout's prompt embeddings equal those of the written-out sentence."
    names = ['red star', 'blue circle']
    coop = CoOp(clip, names, ctx_init='a photo of a', class_token_position=position)
    ids = clip.tokenizer([text.format(n) for n in names])
    torch.testing.assert_close(coop.prompts(), clip.model.token_embedding(ids), atol=0, rtol=0)
    torch.testing.assert_close(coop.eot, eot_positions(ids))
    torch.testing.assert_close(coop.text_features(), zeroshot_weights(clip, names, text), atol=1e-5, rtol=0)

def test_random_init_and_csc_shapes(clip, names):
    a, b = CoOp(clip, names, n_ctx=16, seed=3), CoOp(clip, names, n_ctx=16, seed=3)
    assert a.ctx.shape == (16, 128) and torch.equal(a.ctx, b.ctx)
    assert not torch.equal(a.ctx, CoOp(clip, names, n_ctx=16, seed=4).ctx)
    assert 0.015 < a.ctx.std().item() < 0.025  # N(0, 0.02^2)
    csc = CoOp(clip, names, n_ctx=4, csc=True)
    assert csc.ctx.shape == (8, 4, 128) and csc.text_features().shape == (8, 128)
    csc_init = CoOp(clip, names, ctx_init='a photo of a', csc=True)
    assert csc_init.ctx.shape == (8, 4, 128)
    torch.testing.assert_close(csc_init.text_features(), CoOp(clip, names, ctx_init='a photo of a').text_features())

def test_for_classes_shares_a_copy_of_the_context(clip, names):
    base, new = names[:4], names[4:] + ['green ring']
    coop = CoOp(clip, base, n_ctx=4, seed=1, class_token_position='middle')
    with torch.no_grad(): coop.ctx.add_(0.1 * torch.randn_like(coop.ctx))  # as if trained
    other = coop.for_classes(new)
    assert isinstance(other, CoOp) and other.classnames == new and other.class_token_position == 'middle'
    assert torch.equal(other.ctx, coop.ctx) and other.ctx.data_ptr() != coop.ctx.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(coop.for_classes(base)(unit(5)), coop(unit(5)), atol=0, rtol=0)
        other.ctx.zero_()
    assert coop.ctx.abs().sum() > 0  # a copy: changing one leaves the other
    assert other(unit(5)).shape == (5, 5)

def test_user_errors_say_what_to_change(clip, names):
    with pytest.raises(VLPromptError, match="end, middle, front"): CoOp(clip, names, class_token_position='back')
    with pytest.raises(VLPromptError, match='at least 1'): CoOp(clip, names, n_ctx=0)
    with pytest.raises(VLPromptError, match=r'needs 34 tokens .* takes 32: shorten the prompt length by 2'):
        CoOp(clip, ['red star'], n_ctx=29)  # SOS + 29 + red star . + EOS = 34
    CoOp(clip, ['red star'], n_ctx=27)  # exactly 32 fits
    with pytest.raises(VLPromptError, match='csc'): CoOp(clip, names, n_ctx=2, csc=True).for_classes(['green ring'])

def test_gradients_reach_ctx_only_and_fit_trains_it(clip, names):
    f, y = unit(32), torch.arange(32) % 8
    for csc in (False, True):
        coop = CoOp(clip, names, n_ctx=4, csc=csc)
        assert [n for n, p in coop.named_parameters() if p.requires_grad] == ['ctx'] and list(learnable_state(coop)) == ['ctx']
        F.cross_entropy(coop(f), y).backward()
        assert coop.ctx.grad is not None and coop.ctx.grad.abs().sum() > 0
        assert all(p.grad is None for p in clip.model.parameters())
    coop = CoOp(clip, names, n_ctx=4)
    before = {k: v.clone() for k, v in coop.state_dict().items()}
    clip_before = clip.model.token_embedding.weight.clone()
    history = fit(coop, TrainSet(f[None], y), TrainConfig(epochs=3, lr=0.01, warmup_epochs=0), progress=False)
    assert history[-1]['loss'] < history[0]['loss'] and not torch.equal(coop.ctx, before['ctx'])
    assert all(torch.equal(coop.state_dict()[k], v) for k, v in before.items() if k != 'ctx')  # fixed tokens stay fixed
    assert torch.equal(clip.model.token_embedding.weight, clip_before)
