"The micro self-supervised ViT (15b_micro_ssl) as SPT's backbone through VPT (15_vpt_spt): the shipped checkpoint, its features, SPT's NMI."
import pytest
import torch
from vlprompt.clip import VLPromptError, encode_image_prompted, load_clip
from vlprompt.micro import get_task, micro_preprocess
from vlprompt.micro_ssl import MICRO_SSL_CHECKPOINT, MicroViT, load_micro_ssl, pretrain_micro_ssl
from vlprompt.methods.vpt import VPT, layer_nmi, micro_task_data, vit_shape
from vlprompt.methods.zeroshot import _accuracy, logistic_regression

@pytest.fixture(scope='module')
def ssl(): return load_clip('micro-ssl', device='cpu')

def test_checkpoint_is_small_fp16_weights_only(ssl):
    assert MICRO_SSL_CHECKPOINT.stat().st_size <= 4e6
    payload = torch.load(MICRO_SSL_CHECKPOINT, map_location='cpu', weights_only=True)
    floats = [v for v in payload['state_dict'].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert payload['info']['method'] == 'MoCo v3' and payload['info']['seconds'] <= 240
    assert ssl.tokenizer is None and not any(p.requires_grad for p in ssl.model.parameters())
    assert vit_shape(ssl.model) == dict(width=128, patch=8, layers=4, patches=16, prefix=1, features=128)

def test_missing_checkpoint_says_how_to_regenerate(tmp_path):
    with pytest.raises(VLPromptError, match='python -m vlprompt.micro_ssl'): load_micro_ssl(tmp_path/'none.pt')

def test_pretraining_is_deterministic_and_keeps_the_patch_embedding():
    a, la = pretrain_micro_ssl(steps=2, batch_size=8, seed=5)
    b, lb = pretrain_micro_ssl(steps=2, batch_size=8, seed=5)
    assert la == lb and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.equal(a.visual.conv1.weight, MicroViT(seed=5).visual.conv1.weight)

@torch.no_grad()
def _probe(model, task='micro-pairs', lam=1e-3):
    t = get_task(task)
    (xtr, ytr), (xte, yte) = t.split('train'), t.split('test')
    W, b = logistic_regression(model(micro_preprocess(xtr)), ytr, len(t.classnames), lam)
    return _accuracy(W, b, model(micro_preprocess(xte)), yte)

def test_linear_probe_beats_a_random_vit_and_chance(ssl):
    trained, random = _probe(ssl.model), _probe(MicroViT(seed=0).eval())
    chance = 100 / 64
    assert trained > 20 * chance and trained > random + 15, (trained, random)

def test_prototype_init_has_higher_nmi_than_xavier(ssl):
    data = micro_task_data('micro-pairs-noise', shots=2)
    train = micro_preprocess(data['train'])
    probe = train[::4]
    nmi = {}
    for init in ('xavier', 'kmeans', 'mean_pooling'):
        m = VPT(ssl, data['task'].classnames, n_prompts=4, deep=True, head='linear', init=init, seed=1)
        m.prepare(train)
        nmi[init] = sum(layer_nmi(m, probe)) / 4
    assert nmi['kmeans'] > nmi['xavier'] + 0.02 and nmi['mean_pooling'] > nmi['xavier'] + 0.02, nmi
    logits = m(train[:3])  # the prompted encoder with a linear head on the SSL ViT
    assert logits.shape == (3, 64) and torch.isfinite(logits).all()
