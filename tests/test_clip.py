"The shared prompted encoders on the papers' architecture (ViT-B/16, random weights), and bad input to load_clip."
import os, subprocess, sys, time
import open_clip, pytest, torch
from vlprompt.clip import (VLPromptError, encode_image_prompted, encode_text_ids, encode_text_prompted, eot_positions,
                           load_clip, tiny_clip)

@pytest.fixture(scope='module')
def vitb16():
    torch.manual_seed(0)
    return open_clip.create_model('ViT-B-16', pretrained=None).eval(), open_clip.get_tokenizer('ViT-B-16')

@torch.no_grad()
def test_text_path_equals_open_clip_and_truncation_is_exact(vitb16):
    model, tokenizer = vitb16
    ids = tokenizer(['a photo of a dog.', 'a centered satellite photo of annual crop land.', 'x'])
    reference = model.encode_text(ids)
    torch.testing.assert_close(encode_text_ids(model, ids), reference, atol=1e-5, rtol=0)
    # the same embeddings run over all 77 positions (EOT moved to the end only for the length) give the same features
    emb = model.token_embedding(ids)
    eot = eot_positions(ids)
    full = encode_text_prompted(model, emb, torch.full_like(eot, ids.shape[1] - 1))  # runs all 77 positions
    assert int(eot.max()) + 1 < ids.shape[1]
    x = emb + model.positional_embedding
    for block in model.transformer.resblocks: x = block(x, attn_mask=model.attn_mask)
    manual = model.ln_final(x)[torch.arange(3), eot] @ model.text_projection
    torch.testing.assert_close(encode_text_prompted(model, emb, eot), manual, atol=1e-5, rtol=0)
    assert full.shape == reference.shape

@torch.no_grad()
def test_image_path_equals_open_clip(vitb16):
    model, _ = vitb16
    images = torch.randn(2, 3, 224, 224)
    reference = model.encode_image(images)
    empty = torch.zeros(0, 768)
    for placement in ('after_cls', 'append'):
        torch.testing.assert_close(encode_image_prompted(model, images, [empty], placement=placement), reference, atol=1e-5, rtol=0)
    deep = encode_image_prompted(model, images, [torch.randn(4, 768) * 0.02] * 12)
    appended = encode_image_prompted(model, images, [torch.randn(2, 768)] + [torch.randn(2, 768)] * 8, placement='append')
    for out in (deep, appended):
        assert out.shape == (2, 512) and (out - reference).abs().max() > 1e-3

def test_deep_text_prompts_per_sequence_get_gradients():
    model = tiny_clip()
    ids = open_clip.tokenizer.SimpleTokenizer(context_length=32)(['a photo of a red star.', 'a blue ring.'])
    prompts = torch.zeros(2, 2, 128, requires_grad=True)  # (N, n, d): one prompt per sequence
    feats = encode_text_prompted(model, model.token_embedding(ids), eot_positions(ids), layer_prompts=[None, prompts])
    feats.pow(2).sum().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0

def test_bad_backbone_names_and_files(tmp_path):
    with pytest.raises(VLPromptError, match="Did you mean 'ViT-B-16'"): load_clip('ViT-B-61')
    with pytest.raises(VLPromptError, match='no pretrained tag'): load_clip('ViT-B-16', pretrained='opneai')
    with pytest.raises(VLPromptError, match='not found'): load_clip('ViT-B-16', checkpoint=tmp_path/'missing.pt')
    garbage = tmp_path/'x.pt'; garbage.write_bytes(b'\x00not a checkpoint' * 10)
    with pytest.raises(VLPromptError, match='Could not load'): load_clip('RN50', checkpoint=garbage, device='cpu')

def test_offline_download_says_how_to_get_weights():
    "A pretrained tag that needs a download, on a machine that is offline: one clear paragraph, no trace."
    code = "from vlprompt.clip import load_clip\nload_clip('ViT-B-32', pretrained='openai', device='cpu')"
    start = time.time()
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         env={**os.environ, 'HF_HUB_OFFLINE': '1'})  # the hub library reads it at import
    assert res.returncode != 0 and 'VLPromptError' in res.stderr
    assert 'offline' in res.stderr and 'checkpoint=PATH' in res.stderr
    assert time.time() - start < 60
