"""No method reads the test split before its final evaluation (issue 22's acceptance): for every
registered method, one cheap run on the micro world with a sentinel on the test split that raises
when it is read before `evaluate_method` starts."""
import sys
import pytest
from vlprompt import bench

class EarlyTestRead(AssertionError):
    "The test split was read before the final evaluation."

@pytest.fixture
def sentinel(monkeypatch):
    """Guard the kit's two readers of a split (its features, its images), in every module of the
    kit that holds them, so that the test split raises outside `evaluate_method`."""
    from vlprompt import data
    state = dict(evaluating=False, reads=[])
    real_features, real_images, real_evaluate = (bench.dataset_features, data.load_images,
                                                 bench.evaluate_method)
    def guard(split, where):
        state['reads'].append((split, state['evaluating']))
        if split == 'test' and not state['evaluating']:
            raise EarlyTestRead(f'the test split was read through {where} before the final '
                                'evaluation')
    def features(clip, dataset, split, *a, **k):
        guard(split, 'dataset_features')
        return real_features(clip, dataset, split, *a, **k)
    def images(dataset, split_name, *a, **k):
        guard(split_name, 'load_images')
        return real_images(dataset, split_name, *a, **k)
    def evaluate(*a, **k):
        state['evaluating'] = True
        try: return real_evaluate(*a, **k)
        finally: state['evaluating'] = False
    for name, module in list(sys.modules.items()):
        if not name.startswith('vlprompt') or module is None: continue
        if getattr(module, 'dataset_features', None) is real_features:
            monkeypatch.setattr(module, 'dataset_features', features)
        if getattr(module, 'load_images', None) is real_images:
            monkeypatch.setattr(module, 'load_images', images)
    monkeypatch.setattr(bench, 'evaluate_method', evaluate)
    bench._MEMO.clear()  # features remembered from earlier tests would skip the readers
    yield state
    bench._MEMO.clear()

def test_the_sentinel_fires_on_an_early_read(sentinel):
    from vlprompt.clip import get_clip
    from vlprompt.data import load_dataset
    from vlprompt.methods.zeroshot import ZeroShotClassifier
    clip, data = get_clip('micro'), load_dataset('micro-pairs')
    zs = ZeroShotClassifier(clip, data.classnames, data.template)
    with pytest.raises(EarlyTestRead): bench.accuracy(clip, zs, data)  # a read outside evaluation
    with pytest.raises(EarlyTestRead): bench.split_inputs(clip, zs, data, 'test')
    bench.split_inputs(clip, zs, data, 'val')  # other splits pass

def _cheap(method):
    protocol = 'fewshot' if (method, 'fewshot') in bench.CONFIGS else 'base2new'
    return bench.run_settings(method, protocol, 'micro-pairs', 1, 1, train=dict(epochs=1, views=1))

@pytest.mark.parametrize('method', sorted(bench.METHODS))
def test_no_method_reads_the_test_split_before_its_final_evaluation(sentinel, method):
    metrics = bench.run(_cheap(method), progress=False)
    assert ('test', True) in sentinel['reads']  # evaluated through the guarded readers
    assert ('train', False) in sentinel['reads'] or not bench.ENTRIES[method].trains
    assert not [r for r in sentinel['reads'] if r == ('test', False)]
    assert 0 <= metrics.get('accuracy', metrics.get('base', -1)) <= 100

def test_gdas_paper_selection_reads_the_full_val_split_and_never_test(sentinel):
    s = bench.run_settings('gda', 'fewshot', 'micro-pairs', 1, 1, train=dict(views=1),
                           method_options=dict(paper_selection=True))
    metrics = bench.run(s, progress=False)
    assert metrics['selection'] == 'α on the full val split (paper)'
    before = sentinel['reads'][:sentinel['reads'].index(('test', True))]
    assert ('val', False) in before and ('test', False) not in sentinel['reads']
