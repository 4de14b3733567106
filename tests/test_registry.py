"""A method is one entry (issue 19, goal 1): a toy method defined in this file alone, registered
with `bench.register_method`, runs through `vlprompt train`, `reproduce`, `vlprompt table`
and the speed harness (`vlprompt bench`) without any module of the kit naming it."""
import copy, json
from pathlib import Path
import pytest, torch
import torch.nn as nn
import torch.nn.functional as F
from vlprompt import bench, cli, speed
from vlprompt.clip import clip_logits, zeroshot_weights
from vlprompt.train import Method

NAME = 'toy_shift'

class ToyShift(nn.Module):
    "Zero-shot CLIP whose image features are moved by one learned vector before the cosine."
    needs_images = False
    def __init__(self, clip, classnames, template, seed=0, scale=1.0):
        super().__init__()
        self.clip, self.template, self.scale = clip, template, scale
        self.register_buffer('weights', zeroshot_weights(clip, list(classnames), template))
        self.logit_scale = float(clip.model.logit_scale.exp())
        self.shift = nn.Parameter(torch.zeros(self.weights.shape[1]))
    def forward(self, features):
        moved = F.normalize(features + self.scale * self.shift, dim=-1)
        return clip_logits(moved, self.weights, self.logit_scale)
    def for_classes(self, classnames):
        other = ToyShift(self.clip, classnames, self.template, scale=self.scale)
        other = other.to(self.weights.device)
        with torch.no_grad(): other.shift.copy_(self.shift)
        return other

TOY = Method(NAME, ToyShift, paper=dict(base2new=(1.0, 2.0, 1.33)),
             configs={'base2new': dict(source='tests/test_registry.py', method=dict(scale=1.0),
                                       train=dict(epochs=2, batch_size=16, lr=0.05))})

@pytest.fixture
def toy():
    "Register the toy method; afterwards the kit's tables are as they were."
    tables = (bench.ENTRIES, bench.METHODS, bench.CONFIGS, bench.RULES, bench.PAPER_BASE2NEW,
              bench.PAPER_FEWSHOT_RN50)
    saved = [copy.copy(t) for t in tables] + [list(bench.OFFICIAL_RENAMES)]
    yield bench.register_method(TOY)
    for table, old in zip(tables, saved): table.clear(); table.update(old)
    bench.OFFICIAL_RENAMES[:] = saved[-1]

def test_no_module_names_the_toy():
    package = Path(bench.__file__).parent
    assert not [p for p in package.rglob('*.py') if NAME in p.read_text()]

def test_toy_trains_reproduces_and_tables(toy, tmp_path, capsys):
    assert NAME in bench.METHODS and (NAME, 'base2new') in bench.CONFIGS
    assert NAME not in cli.demo_methods()
    run = tmp_path/'run'
    cli.main(['train', '--method', NAME, '--protocol', 'base2new', '--dataset', 'micro-pairs',
              '--shots', '2', '--out', str(run)])
    metrics = json.loads((run/'metrics.json').read_text())
    assert metrics['settings']['method'] == NAME and metrics['settings']['train']['epochs'] == 2
    assert 0 < metrics['base'] <= 100 and 0 < metrics['new'] <= 100
    shift = torch.load(run/'checkpoint.pt', weights_only=True)
    shift = next(v for k, v in _tensors(shift) if k.endswith('shift'))
    assert shift.abs().sum() > 0  # it learned something
    grid = tmp_path/'grid'
    rows = bench.reproduce('base2new', [NAME], ['micro-pairs'], seeds=(1,), shots=2, out=grid,
                           progress=False)
    assert [r['settings']['method'] for r in rows] == [NAME]
    assert (rows[0]['base'], rows[0]['new']) == (metrics['base'], metrics['new'])  # the same run
    capsys.readouterr()
    cli.main(['table', str(tmp_path/'grid')])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if f'| {NAME} |' in line)
    assert f"{metrics['base']:.1f}" in row and '1.00 / 2.00 / 1.33' in row  # its entry's

def _tensors(obj, prefix=''):
    "Every (name, tensor) in a nested checkpoint dict."
    if torch.is_tensor(obj): yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items(): yield from _tensors(v, f'{prefix}.{k}' if prefix else str(k))

def test_toy_in_the_speed_harness(toy):
    assert NAME in speed.trainable_methods()
    clip = speed.bench_clip('micro')
    module, rule, s = speed.bench_method(NAME, clip, speed.bench_classnames(clip, 4), 'micro')
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 3])
    with torch.no_grad(): features = speed.image_features(clip, images)
    fast = speed.fast_gradients(module, rule, features, labels)
    fast = [g.clone() for g in fast]
    reference = speed.reference_gradients(module, rule, images, labels, clip)
    torch.testing.assert_close(fast[0], reference[0], rtol=1e-4, atol=1e-6)
    assert fast[0].abs().sum() > 0
    row = speed.bench_row(NAME, clip, 'micro', 4, steps=1, warmup=0)
    assert row['method'] == NAME and row['fast_s'] > 0 and row['reference_s'] > 0
