"Tests that cross notebooks: the micro world's determinism, the shipped checkpoint, and bad checkpoint files."
import random, subprocess, sys
import pytest, torch
from vlprompt import micro
from vlprompt.clip import VLPromptError, load_clip, tiny_clip

def draw(seed, style='photo', n=64):
    g, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    attrs = micro.random_attributes(n, g)
    return micro.render(attrs, style, g), micro.captions(attrs, rng)[0]

@pytest.mark.parametrize('style', list(micro.STYLES))
def test_generator_is_deterministic(style):
    (a, caps_a), (b, caps_b), (c, _) = draw(7, style), draw(7, style), draw(8, style)
    assert torch.equal(a, b) and caps_a == caps_b
    assert not torch.equal(a, c)
    assert a.shape == (64, 3, 32, 32) and 0 <= a.min() and a.max() <= 1

def test_task_splits_are_fixed_and_disjoint():
    task = micro.get_task('micro-pairs')
    x1, y1 = task.split('test'); x2, y2 = task.split('test'); xt, _ = task.split('train')
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert len(y1) == 64 * task.per_class['test'] and (y1.bincount() == task.per_class['test']).all()
    assert not torch.equal(xt[:10], x1[:10])
    with pytest.raises(VLPromptError, match='no .train. split'): micro.get_task('micro-pairs-sketch').split('train')
    with pytest.raises(VLPromptError, match="Did you mean 'micro-pairs'"): micro.get_task('micro-pair')

@pytest.fixture(scope='module')
def shipped():
    return load_clip('micro', device='cpu')

def test_shipped_checkpoint_matches_its_record(shipped):
    recorded = {r['task']: r for r in shipped.model.micro_info['zeroshot']}
    for name in ('micro-pairs', 'micro-pairs-sketch'):
        measured = micro.zeroshot_accuracy(shipped, name)
        assert measured == pytest.approx(recorded[name]['template'], abs=0.5), name
    assert 40 <= recorded['micro-pairs']['template_mean'] <= 80  # room to learn (issue 20)

def test_shipped_checkpoint_is_small_and_weights_only():
    assert micro.MICRO_CHECKPOINT.stat().st_size < 6e6
    payload = torch.load(micro.MICRO_CHECKPOINT, weights_only=True)
    assert payload['format'] == 'vlprompt-micro-clip-1'

def test_checkpoint_round_trip_and_bad_files(tmp_path, shipped):
    path = tmp_path/'m.pt'
    micro.save_micro_checkpoint(shipped.model, path, {'note': 'copy'})
    assert not list(tmp_path.glob('*.tmp'))
    model = tiny_clip(seed=3)
    assert micro.load_micro_weights(model, path) == {'note': 'copy'}
    for a, b in zip(model.parameters(), shipped.model.parameters()): assert torch.equal(a, b.cpu())
    truncated = tmp_path/'truncated.pt'; truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(VLPromptError, match='not a readable micro CLIP checkpoint'): micro.load_micro_weights(tiny_clip(), truncated)
    with pytest.raises(VLPromptError, match='is missing'): micro.load_micro_weights(tiny_clip(), tmp_path/'none.pt')
    with pytest.raises(VLPromptError, match='--overwrite'): micro.regenerate(path, steps=1)

def test_regenerate_command_refuses_to_overwrite(tmp_path):
    path = tmp_path/'m.pt'; path.write_bytes(b'user data')
    res = subprocess.run([sys.executable, '-m', 'vlprompt.micro', '--out', str(path), '--steps', '1'], capture_output=True, text=True)
    assert res.returncode != 0 and '--overwrite' in res.stderr and 'Traceback' not in res.stderr
    assert path.read_bytes() == b'user data'

def test_pretraining_is_deterministic():
    "Same seed, same machine: the same weights (what `python -m vlprompt.micro` relies on)."
    a, losses_a = micro.pretrain_micro_clip(steps=3, batch_size=32, progress=False)
    b, losses_b = micro.pretrain_micro_clip(steps=3, batch_size=32, progress=False)
    assert losses_a == losses_b
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
