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

ACTIVATIONS = lambda m: {type(b.mlp.gelu).__name__ for t in (m.visual.transformer, m.transformer) for b in t.resblocks}

def test_openai_tag_builds_quickgelu_through_the_real_route(monkeypatch):
    "`load_clip('ViT-B-16', pretrained='openai')`, offline: the download and the weight load are stood in for, the build is real."
    import open_clip.factory as factory
    asked = []
    monkeypatch.setattr(factory, 'download_pretrained', lambda cfg, cache_dir=None: asked.append(cfg) or 'weights.pt')
    monkeypatch.setattr(factory, 'load_checkpoint', lambda model, path, **k: None)
    for tag, activation in (('openai', 'QuickGELU'), ('laion2b_s34b_b88k', 'GELU')):
        clip = load_clip('ViT-B-16', pretrained=tag, device='cpu')
        assert ACTIVATIONS(clip.model) == {activation}, (tag, ACTIVATIONS(clip.model))
    assert len(asked) == 2
    for name, tag in open_clip.list_pretrained():  # every tag whose weights were trained with QuickGELU gets it
        from vlprompt.clip import open_clip_build
        cfg = open_clip.get_pretrained_cfg(name, tag)
        assert open_clip_build(name, tag)['force_quick_gelu'] == bool(cfg.get('quick_gelu')), (name, tag)

@torch.no_grad()
def test_openai_state_dict_equals_open_clips_quickgelu_model(tmp_path):
    "ViT-B/16 weights in OpenAI's layout (extra entries, fp16) load as QuickGELU and equal open_clip's ViT-B-16-quickgelu to 1e-6."
    torch.manual_seed(1)
    reference = open_clip.create_model('ViT-B-16-quickgelu').eval().requires_grad_(False)
    sd = {k: v.half() if v.is_floating_point() and v.dim() > 1 else v for k, v in reference.state_dict().items()}
    reference.load_state_dict(sd)  # the reference holds the same (fp16-rounded) numbers
    sd.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    images, ids = torch.randn(2, 3, 224, 224), open_clip.get_tokenizer('ViT-B-16')(['a photo of a dog.', 'a cat.'])
    loaded = load_clip('ViT-B-16', state_dict=sd, device='cpu')
    assert ACTIVATIONS(loaded.model) == {'QuickGELU'}
    for encode, x in (('encode_image', images), ('encode_text', ids)):
        a, b = getattr(loaded.model, encode)(x), getattr(reference, encode)(x)
        assert float((a - b).norm() / b.norm()) < 1e-6, encode
    cfg = {**open_clip.get_model_config('ViT-B-16'), 'quick_gelu': False}  # a config dict; the layout still says QuickGELU
    from_config = load_clip('my-vit', state_dict=sd, config=cfg, device='cpu').model
    assert ACTIVATIONS(from_config) == {'QuickGELU'}
    torch.testing.assert_close(from_config.encode_image(images), reference.encode_image(images), atol=1e-5, rtol=1e-6)
