"""The data module on fake folders in every official layout (written here by hand, independently of make_fake_dataset),
few-shot sampling against a re-implementation of Dassl's rule, the few-shot record, base/new, bad input and the micro tasks."""
import json, os, random, warnings
from collections import defaultdict
from pathlib import Path

import pytest, torch
import torchvision.transforms as T
from PIL import Image

from vlprompt import data
from vlprompt.clip import VLPromptError
from vlprompt.data import (Dataset, Split, fewshot, fewshot_splits, load_dataset, load_images, subsample_classes)
from vlprompt.micro import get_task

TF = T.Compose([T.Resize(20), T.CenterCrop(20), T.ToTensor()])

def image(path, colour=(200, 30, 30), size=(24, 18)):
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, colour).save(path)  # format from the suffix: .jpg/.JPEG -> JPEG, .png -> PNG

def write_split(folder, name, rows, image_root):
    "rows: {split: [(relpath, label, classname)]}; writes the images and split_zhou_<name>.json."
    for s in rows:
        for rel, y, _ in rows[s]: image(Path(image_root)/rel, (40 * y, 100, 200))
    Path(folder, f'split_zhou_{name}.json').write_text(json.dumps({s: [list(r) for r in rows[s]] for s in ('train', 'val', 'test')}))

def by_class(names, make_rel, counts=(3, 2, 2)):
    "Rows for each split: `counts` images per class, labels interleaved as in CoOp's files."
    rows = {}
    for s, k in zip(('train', 'val', 'test'), counts):
        rows[s] = [(make_rel(y, c, s, j), y, c) for j in range(k) for y, c in enumerate(names)]
    return rows

# The split-file datasets: folder, CoOp name, image folder, class names as the file has them, path maker, expected names
SPLIT_LAYOUTS = {
    'caltech101': ('caltech-101', 'Caltech101', '101_ObjectCategories', ['accordion', 'airplane', 'face'],
                   lambda y, c, s, j: f'{["accordion", "airplanes", "Faces"][y]}/image_{s}{j:04d}.jpg', ['accordion', 'airplane', 'face']),
    'oxford_pets': ('oxford_pets', 'OxfordPets', 'images', ['abyssinian', 'american_bulldog', 'yorkshire_terrier'],
                    lambda y, c, s, j: f'{c}_{s}{j}.jpg', ['abyssinian', 'american bulldog', 'yorkshire terrier']),
    'stanford_cars': ('stanford_cars', 'StanfordCars', '', ['2012 AM General Hummer SUV', '2012 Acura RL Sedan', '2007 BMW X5 SUV'],
                      lambda y, c, s, j: f'cars_{"test" if s == "test" else "train"}/{y}{s[:2]}{j:03d}.jpg', None),
    'oxford_flowers': ('oxford_flowers', 'OxfordFlowers', 'jpg', ['pink primrose', 'hard-leaved pocket orchid', 'canterbury bells'],
                       lambda y, c, s, j: f'image_{y}{s[:2]}{j:03d}.jpg', None),
    'food101': ('food-101', 'Food101', 'images', ['apple_pie', 'baby_back_ribs', 'baklava'],
                lambda y, c, s, j: f'{c}/{y}{s}{j}.jpg', ['apple pie', 'baby back ribs', 'baklava']),
    'sun397': ('sun397', 'SUN397', 'SUN397', ['abbey', 'outdoor apartment_building', 'indoor bow_window'],
               lambda y, c, s, j: f'{["a/abbey", "a/apartment_building/outdoor", "b/bow_window/indoor"][y]}/sun_{s}{j}.jpg',
               ['abbey', 'outdoor apartment building', 'indoor bow window']),
    'dtd': ('dtd', 'DescribableTextures', 'images', ['banded', 'blotchy', 'braided'],
            lambda y, c, s, j: f'{c}/{c}_{s}{j:04d}.jpg', None),
    'eurosat': ('eurosat', 'EuroSAT', '2750', ['Annual Crop Land', 'Forest', 'Sea or Lake'],
                lambda y, c, s, j: f'{["AnnualCrop", "Forest", "SeaLake"][y]}/{["AnnualCrop", "Forest", "SeaLake"][y]}_{s}{j}.jpg', None),
    'ucf101': ('ucf101', 'UCF101', 'UCF-101-midframes', ['Apply_Eye_Makeup', 'Apply_Lipstick', 'Archery'],
               lambda y, c, s, j: f'{c}/v_{c}_g{j:02d}_{s}.jpg', ['Apply Eye Makeup', 'Apply Lipstick', 'Archery']),
}
WNIDS = ['n01440764', 'n01443537', 'n01484850', 'n01491361', 'n01494475']
IMAGENET_NAMES = ['tench', 'goldfish', 'great white shark', 'tiger shark', 'hammerhead shark']

def classnames_txt(path, n=5):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(''.join(f'{w} {c}\n' for w, c in zip(WNIDS[:n], IMAGENET_NAMES[:n])))

def build(root, name):
    "Write a fake `name` in CoOp's DATASETS.md layout under root; return the class names the loader should give."
    root = Path(root)
    if name in SPLIT_LAYOUTS:
        folder, coop, image_dir, names, make_rel, expected = SPLIT_LAYOUTS[name]
        write_split(root/folder, coop, by_class(names, make_rel), root/folder/image_dir)
        return expected or names
    if name == 'fgvc_aircraft':
        variants = ['707-320', 'A300B4', 'Cessna 172', 'F-16A/B']
        (root/'fgvc_aircraft').mkdir(parents=True)
        (root/'fgvc_aircraft'/'variants.txt').write_text(''.join(v + '\n' for v in variants))
        for s, k in (('train', 3), ('val', 2), ('test', 2)):
            lines = []
            for y, v in enumerate(variants):
                for j in range(k):
                    image_id = f'{y}{len(s)}{j:05d}'
                    image(root/'fgvc_aircraft'/'images'/f'{image_id}.jpg', (60 * y, 10, 10)); lines.append(f'{image_id} {v}')
            (root/'fgvc_aircraft'/f'images_variant_{s}.txt').write_text('\n'.join(lines) + '\n')
        return variants
    if name == 'imagenet':
        classnames_txt(root/'imagenet'/'classnames.txt')
        for s, k in (('train', 3), ('val', 2)):
            for y, w in enumerate(WNIDS):
                for j in range(k): image(root/'imagenet'/'images'/s/w/f'{w}_{j}.JPEG', (50 * y, 50, 50))
        return IMAGENET_NAMES
    if name == 'imagenetv2':
        classnames_txt(root/'imagenetv2'/'classnames.txt')
        for y in range(5):
            for j in range(2): image(root/'imagenetv2'/'imagenetv2-matched-frequency-format-val'/str(y)/f'{j}abc.jpeg', (50 * y, 0, 0))
        return IMAGENET_NAMES
    folder, image_dir = {'imagenet_sketch': ('imagenet-sketch', 'images'), 'imagenet_a': ('imagenet-adversarial', 'imagenet-a'),
                         'imagenet_r': ('imagenet-rendition', 'imagenet-r')}[name]
    classnames_txt(root/folder/'classnames.txt')
    kept = [0, 1, 2, 3, 4] if name == 'imagenet_sketch' else [1, 3]  # -A and -R hold only some of the wnids
    for y in kept:
        for j in range(2): image(root/folder/image_dir/WNIDS[y]/f'{j}.png', (50 * y, 0, 0))
    (root/folder/image_dir/'README.txt').write_text('not a class\n')
    return [IMAGENET_NAMES[y] for y in kept]

@pytest.mark.parametrize('name', data.list_datasets('files'))
def test_every_layout_loads(tmp_path, name):
    expected = build(tmp_path, name)
    ds = load_dataset(name, tmp_path)
    assert ds.classnames == expected and ds.source == 'files' and ds.num_classes == len(expected)
    assert ds.template == data.DATASETS[name].template
    for s in ('train', 'val', 'test'):
        split = getattr(ds, s)
        if split is None: continue
        assert len(split) > 0 and len(split.items) == len(split.labels)
        assert set(split.labels) == set(range(len(expected)))
        assert all(os.path.isabs(p) and os.path.isfile(p) for p in split.items)
    test_only = name in ('imagenetv2', 'imagenet_sketch', 'imagenet_a', 'imagenet_r')
    assert (ds.train is None) == test_only and (ds.val is None) == (test_only or name == 'imagenet')
    x = load_images(ds, 'test', [0, len(ds.test) - 1], TF)
    assert x.shape == (2, 3, 20, 20) and x.dtype == torch.float32

def test_labels_follow_the_files(tmp_path):
    build(tmp_path, 'eurosat'); build(tmp_path, 'imagenet'); build(tmp_path, 'imagenet_a'); build(tmp_path, 'fgvc_aircraft')
    eurosat = load_dataset('eurosat', tmp_path)
    assert all(Path(p).parent.name == ['AnnualCrop', 'Forest', 'SeaLake'][y] for p, y in zip(eurosat.train.items, eurosat.train.labels))
    assert eurosat.train.items[0] == str(tmp_path/'eurosat'/'2750'/'AnnualCrop'/'AnnualCrop_train0.jpg')
    imagenet = load_dataset('imagenet', tmp_path)
    assert all(WNIDS[y] in p for p, y in zip(imagenet.test.items, imagenet.test.labels))  # official val set = test
    assert len(imagenet.train) == 15 and len(imagenet.test) == 10
    a = load_dataset('imagenet_a', tmp_path)
    assert [WNIDS[1] in p for p in a.test.items] == [True, True, False, False] and a.test.labels == [0, 0, 1, 1]
    aircraft = load_dataset('fgvc_aircraft', tmp_path)
    assert aircraft.test.labels == [0, 0, 1, 1, 2, 2, 3, 3] and aircraft.test.items[2].endswith('/images/1400000.jpg')

def test_shifted_imagenets_fall_back_to_imagenet_classnames(tmp_path):
    build(tmp_path, 'imagenetv2'); (tmp_path/'imagenetv2'/'classnames.txt').unlink()
    with pytest.raises(VLPromptError, match='classnames.txt'): load_dataset('imagenetv2', tmp_path)
    classnames_txt(tmp_path/'imagenet'/'classnames.txt')
    assert load_dataset('imagenetv2', tmp_path).classnames == IMAGENET_NAMES

def dassl_fewshot(train, val, shots, seed):
    "Dassl's generate_fewshot_dataset as CoOp calls it: random.seed(seed), train with K shots, then val with min(K, 4)."
    state = random.getstate()
    try:
        random.seed(seed)
        def generate(pairs, k):
            tracker = defaultdict(list)
            for item, label in pairs: tracker[label].append((item, label))
            out = []
            for label, items in tracker.items(): out.extend(random.sample(items, k) if len(items) >= k else items)
            return out
        return generate(zip(train.items, train.labels), shots), generate(zip(val.items, val.labels), min(shots, 4))
    finally: random.setstate(state)

def uneven(tmp_path):
    "A pets folder whose classes have 1 to 20 training images, listed in shuffled order (first-occurrence order != label order)."
    names = [f'breed_{k}' for k in range(6)]
    counts = {'train': [1, 3, 5, 9, 17, 20], 'val': [1, 2, 3, 4, 5, 6], 'test': [1] * 6}
    rows = {s: [(f'{names[y]}_{s}_{j}.png', y, names[y]) for y in range(6) for j in range(n[y])] for s, n in counts.items()}
    g = random.Random(0)
    g.shuffle(rows['train']); g.shuffle(rows['val'])
    (tmp_path/'oxford_pets').mkdir()
    write_split(tmp_path/'oxford_pets', 'OxfordPets', rows, tmp_path/'oxford_pets'/'images')
    return load_dataset('oxford_pets', tmp_path)

@pytest.mark.parametrize('shots', [1, 2, 4, 16])
def test_fewshot_matches_dassl(tmp_path, shots):
    ds = uneven(tmp_path)
    for seed in (1, 2, 3):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            few = fewshot_splits(ds, shots, seed, tmp_path/'cache')
        ref_train, ref_val = dassl_fewshot(ds.train, ds.val, shots, seed)
        assert list(zip(few.train.items, few.train.labels)) == ref_train
        assert list(zip(few.val.items, few.val.labels)) == ref_val
        assert few.test == ds.test
    counts = defaultdict(int)
    for y in ds.train.labels: counts[y] += 1
    assert len(few.train) == sum(min(shots, n) for n in counts.values())

def test_fewshot_on_micro_matches_dassl_and_warns_when_short(tmp_path):
    pairs = load_dataset('micro-pairs')
    for shots, seed in ((1, 1), (16, 2)):
        few = fewshot_splits(pairs, shots, seed, None)
        ref_train, ref_val = dassl_fewshot(pairs.train, pairs.val, shots, seed)
        assert list(zip(few.train.items, few.train.labels)) == ref_train and list(zip(few.val.items, few.val.labels)) == ref_val
        assert len(few.train) == 64 * shots and len(few.val) == 64 * min(shots, 4)
    with pytest.warns(UserWarning, match=r'64 of 64 classes have fewer than 40 items, so all of theirs are used'):
        few = fewshot(pairs.train, 40, random.Random(0), 'micro-pairs train')
    assert few == pairs.train  # Dassl keeps every item of a short class, in order

def test_fewshot_record_is_written_reused_and_guarded(tmp_path, monkeypatch):
    ds = uneven(tmp_path)
    cache = tmp_path/'cache'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        first = fewshot_splits(ds, 4, 1, cache)
    record = cache/'oxford_pets'/'shot_4-seed_1.json'
    rec = json.loads(record.read_text())
    assert rec['shots'] == 4 and rec['seed'] == 1 and len(rec['train']) == len(first.train) and len(rec['split_hash']) == 64
    assert [ds.train.items[i] for i in rec['train']] == first.train.items
    assert sorted(os.listdir(record.parent)) == ['shot_4-seed_1.json']  # no temporary file left behind
    def no_sampling(*a, **k): raise AssertionError('sampled again instead of reading the record')
    monkeypatch.setattr(data, 'fewshot_indices', no_sampling)
    assert fewshot_splits(ds, 4, 1, cache) == first  # read from the file
    assert fewshot_splits(ds, 0, 1, cache) == ds and fewshot_splits(ds, -1, 1, cache) == ds  # all data
    # the data changed since the record was written: stop, never resample silently
    changed = Dataset(**{**ds.__dict__, 'train': Split(ds.train.items[1:], ds.train.labels[1:])})
    with pytest.raises(VLPromptError, match='was drawn from a different oxford_pets split'): fewshot_splits(changed, 4, 1, cache)
    rec['split_hash'] = 'f' * 64; record.write_text(json.dumps(rec))
    with pytest.raises(VLPromptError, match='Delete'): fewshot_splits(ds, 4, 1, cache)
    record.write_text('{"train": [0, 1')
    with pytest.raises(VLPromptError, match='not valid JSON'): fewshot_splits(ds, 4, 1, cache)
    # moving the data root keeps the record valid: the hash uses paths relative to the dataset folder
    monkeypatch.undo()
    os.rename(tmp_path/'oxford_pets', tmp_path/'moved')
    (tmp_path/'new_root').mkdir(); os.rename(tmp_path/'moved', tmp_path/'new_root'/'oxford_pets')
    record.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        fewshot_splits(ds, 4, 1, cache)
        assert fewshot_splits(load_dataset('oxford_pets', tmp_path/'new_root'), 4, 1, cache).train.labels == first.train.labels
    with pytest.raises(VLPromptError, match='positive integer'): fewshot_splits(ds, -3, 1, cache)

def test_base_new_split(tmp_path):
    names = ['c0', 'c1', 'c2', 'c3', 'c4']
    (tmp_path/'dtd').mkdir()
    write_split(tmp_path/'dtd', 'DescribableTextures', by_class(names, lambda y, c, s, j: f'{c}/{s}{j}.jpg', (2, 1, 2)), tmp_path/'dtd'/'images')
    ds = load_dataset('dtd', tmp_path)
    base, new, every = (subsample_classes(ds, s) for s in ('base', 'new', 'all'))
    assert every == ds
    assert base.classnames == ['c0', 'c1', 'c2'] and new.classnames == ['c3', 'c4']
    for part, first in ((base, 0), (new, 3)):
        for s in ('train', 'val', 'test'):
            split, full = getattr(part, s), getattr(ds, s)
            assert set(split.labels) == set(range(part.num_classes))
            assert all(full.labels[full.items.index(p)] == y + first for p, y in zip(split.items, split.labels))
            assert len(split) == sum(first <= y < first + part.num_classes for y in full.labels)
    with pytest.raises(VLPromptError, match="Did you mean 'base'"): subsample_classes(ds, 'bas')

def test_missing_data_says_where_and_how(tmp_path, monkeypatch):
    with pytest.raises(VLPromptError) as e: load_dataset('oxford_pets', tmp_path)
    assert str(tmp_path/'oxford_pets') in str(e.value) and 'split_zhou_OxfordPets.json' in str(e.value)
    assert 'DATASETS.md#oxfordpets' in str(e.value)
    (tmp_path/'oxford_pets'/'images').mkdir(parents=True)
    with pytest.raises(VLPromptError) as e: load_dataset('oxford_pets', tmp_path)
    assert str(tmp_path/'oxford_pets'/'split_zhou_OxfordPets.json') in str(e.value) and "CoOp's fixed split" in str(e.value)
    build(tmp_path, 'food101'); next((tmp_path/'food-101'/'images'/'baklava').iterdir()).unlink()
    with pytest.raises(VLPromptError, match=r'1 of the \d+ \w+ images listed in split_zhou_Food101.json are missing'):
        load_dataset('food101', tmp_path)
    with pytest.raises(VLPromptError, match=r"fgvc_aircraft.* not found"): load_dataset('fgvc_aircraft', tmp_path)
    monkeypatch.delenv('VLPROMPT_DATA', raising=False)
    with pytest.raises(VLPromptError, match='VLPROMPT_DATA'): load_dataset('dtd')
    build(tmp_path, 'dtd'); monkeypatch.setenv('VLPROMPT_DATA', str(tmp_path))
    assert load_dataset('dtd').folder == str(tmp_path/'dtd')

@pytest.mark.parametrize('entry, message', [
    (['a.jpg', 0], r'test\[1\] should be \[relative image path, integer label, class name\]'),
    (['a.jpg', '0', 'x'], r'test\[1\] should be'),
    (['a.jpg', 7, 'x'], r'test\[1\] has label 7, out of range'),
    (['a.jpg', -1, 'x'], r'test\[1\] has label -1, out of range'),
    (['a.jpg', 1, 'x'], r"label 1 is 'blotchy' at train\[1\] but 'x' at test\[1\]"),
])
def test_bad_split_files(tmp_path, entry, message):
    build(tmp_path, 'dtd')
    path = tmp_path/'dtd'/'split_zhou_DescribableTextures.json'
    split = json.loads(path.read_text()); split['test'][1] = entry; path.write_text(json.dumps(split))
    with pytest.raises(VLPromptError, match=message): load_dataset('dtd', tmp_path)

def test_bad_split_file_shape(tmp_path):
    build(tmp_path, 'dtd')
    path = tmp_path/'dtd'/'split_zhou_DescribableTextures.json'
    path.write_text(json.dumps({'train': [], 'test': []}))
    with pytest.raises(VLPromptError, match='lists "train", "val" and "test"'): load_dataset('dtd', tmp_path)
    path.write_text('{"train": [')
    with pytest.raises(VLPromptError, match='not valid JSON'): load_dataset('dtd', tmp_path)

def test_unknown_names_suggest(tmp_path):
    with pytest.raises(VLPromptError, match="Did you mean 'oxford_flowers'"): load_dataset('oxford_flower', tmp_path)
    with pytest.raises(VLPromptError, match="Did you mean 'fgvc_aircraft'"): load_dataset('FGVCAircraft', tmp_path)
    with pytest.raises(VLPromptError, match="Did you mean 'micro-pairs'"): load_dataset('micro-pair')
    build(tmp_path, 'fgvc_aircraft')
    txt = tmp_path/'fgvc_aircraft'/'images_variant_val.txt'
    txt.write_text(txt.read_text().replace('Cessna 172', 'Cesna 172'))
    with pytest.raises(VLPromptError, match=r"images_variant_val.txt line 5: variant 'Cesna 172' .*Did you mean 'Cessna 172'"):
        load_dataset('fgvc_aircraft', tmp_path)

def test_load_images_errors(tmp_path):
    build(tmp_path, 'dtd')
    ds = load_dataset('dtd', tmp_path)
    with pytest.raises(VLPromptError, match='pass transform='): load_images(ds, 'train', [0])
    with pytest.raises(VLPromptError, match='outside the val split'): load_images(ds, 'val', [len(ds.val)], TF)
    Path(ds.test.items[0]).write_bytes(b'not an image')
    with pytest.raises(VLPromptError, match='Cannot read image'): load_images(ds, 'test', [0], TF)
    assert load_images(ds, 'train', None, TF).shape == (len(ds.train), 3, 20, 20)

def test_micro_tasks():
    pairs = load_dataset('micro-pairs')
    assert pairs.source == 'micro' and pairs.num_classes == 64 and pairs.classnames == get_task('micro-pairs').classnames
    assert pairs.train.items == list(range(64 * 32)) and len(pairs.val) == 64 * 8 and pairs.template == 'a photo of a {}.'
    images, labels = get_task('micro-pairs').split('test')
    assert pairs.test.labels == labels.tolist()
    idx = [0, 7, len(pairs.test) - 1]
    torch.testing.assert_close(load_images(pairs, 'test', idx), images[idx], rtol=0, atol=0)
    normalised = load_images(pairs, 'test', idx, transform=lambda x: (x - 0.5) / 0.25)
    torch.testing.assert_close(normalised, (images[idx] - 0.5) / 0.25)
    sketch = load_dataset('micro-pairs-sketch')
    assert sketch.train is None and sketch.val is None and len(sketch.test) == 64 * 25
    with pytest.raises(VLPromptError, match='no train split'): load_images(sketch, 'train', [0])
    assert set(data.list_datasets('micro')) == set(data.MICRO_TASKS) and len(data.list_datasets()) == 15 + len(data.MICRO_TASKS)
