"""Your own images as a task (`--dataset folder:PATH`) and the data doctor (`vlprompt data check`), as a user runs them:
a generated folder through `vlprompt train`, every bad folder refused before anything is written, planted faults in fake
CoOp layouts named by the check, and `reproduce` stopping on a failed check."""
import hashlib, json, os, subprocess, sys
from pathlib import Path
import numpy as np, pytest
from PIL import Image

VLPROMPT = str(Path(sys.executable).parent/'vlprompt')
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1'}
ENV.pop('VLPROMPT_DATA', None)

def cli(*args):
    return subprocess.run([VLPROMPT, *map(str, args)], capture_output=True, text=True, env=ENV)

def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*')) if p.is_file()}

def refused(res, *must_say):
    assert res.returncode == 2, (res.returncode, res.stdout[-500:], res.stderr[-2000:])
    message = res.stderr.strip().splitlines()[-1]
    assert 'Traceback' not in res.stderr and message.startswith('vlprompt '), res.stderr[-2000:]
    for words in must_say: assert words in message, (words, message)
    return message

def photos(root: Path, counts: dict, suffix='.png') -> Path:
    "An ImageFolder of micro-world-sized images: one colour per class, some noise."
    g = np.random.default_rng(0)
    for k, (c, n) in enumerate(counts.items()):
        for j in range(n):
            path = root/c/f'{j:03d}{suffix}'; path.parent.mkdir(parents=True, exist_ok=True)
            base = np.array([(60 * k) % 256, (110 * k + 40) % 256, 200 - 20 * k], dtype=np.int16)
            Image.fromarray(np.clip(base + g.integers(-30, 31, (32, 32, 3)), 0, 255).astype(np.uint8)).save(path)
    return root

def micro_photos(root: Path, classes=(0, 9, 18, 27, 36, 45), per_class: int = 12) -> Path:
    "Micro-world test images written as PNG files, one folder per colour-shape class: what the micro CLIP can recognise."
    from vlprompt.micro import get_task
    task = get_task('micro-pairs')
    images, labels = task.split('test')
    for y in classes:
        for j, k in enumerate((labels == y).nonzero().flatten()[:per_class].tolist()):
            path = root/task.classnames[y].replace(' ', '_')/f'{j:03d}.png'; path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((images[k].permute(1, 2, 0) * 255).round().byte().numpy()).save(path)
    return root

def test_train_coop_base2new_on_a_generated_folder(tmp_path):
    "The acceptance command: CoOp, base-to-new, 4 shots, on a folder; the split is drawn once, written next to the data, reused."
    folder = micro_photos(tmp_path/'my_images')
    classes = sorted(p.name for p in folder.iterdir())
    out = tmp_path/'run'
    res = cli('train', '--method', 'coop', '--dataset', f'folder:{folder}', '--protocol', 'base2new', '--shots', 4,
              '--set', 'epochs=5', '--out', out)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out/'metrics.json').read_text())
    assert m['base'] > 50 and m['new'] > 50  # 3 + 3 classes (chance 33%): the micro CLIP reads the images through the files
    assert abs(m['hm'] - 2 * m['base'] * m['new'] / (m['base'] + m['new'])) < 1e-9
    assert m['settings']['dataset'] == f'folder:{folder}' and m['indices']['train'] == 6 * 4  # 4 shots of each of the 6 classes
    split = json.loads((folder/'split_vlprompt.json').read_text())
    assert [len(split[s]) for s in ('train', 'val', 'test')] == [6 * 6, 6 * 2, 6 * 4]  # round(0.5 * 12), round(0.2 * 12), the rest
    assert {r[2] for r in split['train']} == {c.replace('_', ' ') for c in classes}
    before = (folder/'split_vlprompt.json').read_bytes()
    res = cli('eval', '--run', out)  # read back from the split file: the run's own numbers
    assert res.returncode == 0, res.stderr[-2000:]
    again = json.loads(res.stdout[res.stdout.index('{'):])
    assert (again['base'], again['new']) == (m['base'], m['new'])
    assert (folder/'split_vlprompt.json').read_bytes() == before

def test_a_listing_with_splits_and_a_template(tmp_path):
    folder = photos(tmp_path/'pics', {'a': 6, 'b': 6})
    rows = ['path,label,split'] + [f'{c}/{j:03d}.png,{c},{"train" if j < 4 else "test"}' for c in 'ab' for j in range(6)]
    (folder/'labels.csv').write_text('\n'.join(rows) + '\n')
    (folder/'classnames.txt').write_text('a forest\nb sea_lake\n')
    res = cli('train', '--method', 'zeroshot', '--dataset', f'folder:{folder/"labels.csv"}', '--shots', 4,
              '--template', 'a satellite photo of {}.', '--out', tmp_path/'run')
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads((tmp_path/'run'/'config.json').read_text())
    assert s['template'] == 'a satellite photo of {}.'
    assert not (folder/'split_vlprompt.json').exists()  # the listing's own splits: nothing drawn

def bad_folders(root: Path) -> dict:
    "Each bad input of the issue, as a folder: name -> (folder, extra CLI args, words the message must hold)."
    cases = {}
    cases['one class'] = (photos(root/'one', {'cat': 10}), [], ['only one class', "'cat'"])
    cases['too few for the shots'] = (photos(root/'few', {'cat': 12, 'dog': 7, 'owl': 12}), ['--shots', 5],
                                      ["'dog' (4)", 'Use --shots 4 or fewer'])
    lst = photos(root/'listing', {'cat': 4, 'dog': 4})
    (lst/'labels.csv').write_text('path,label\n' + ''.join(f'{c}/{j:03d}.png,{c}\n' for c in ('cat', 'dog') for j in range(5)))
    cases['listing names missing files'] = (lst, [], ['2 of the 10 images listed', '004.png'])
    names = photos(root/'names', {'cat': 4, 'dog': 4})
    (names/'labels.json').write_text(json.dumps([dict(path=f'{c}/{j:03d}.png', label=c) for c in ('cat', 'dog') for j in range(4)]))
    (names/'classnames.txt').write_text('cat a cat\nkitten a kitten\n')
    cases['labels not in the names file'] = (names, [], ["'dog'", 'classnames.txt'])
    junk = photos(root/'junk', {'cat': 8, 'dog': 8}); (junk/'cat'/'Thumbs.db').write_bytes(b'\0' * 64)
    cases['a non-image file'] = (junk, [], ['not images', 'Thumbs.db'])
    broken = photos(root/'broken', {'cat': 8, 'dog': 8}); (broken/'dog'/'007.png').write_text('<html>404</html>')
    cases['a file that is not an image'] = (broken, [], ['not readable images', '007.png'])
    dupes = photos(root/'dupes', {'sea_lake': 8, 'sea lake': 8, 'forest': 8})
    cases['duplicate class names'] = (dupes, [], ["both become 'sea lake'"])
    return cases

def test_bad_folders_are_refused_and_nothing_is_written(tmp_path):
    for name, (folder, extra, words) in bad_folders(tmp_path/'data').items():
        before, out = tree(folder), tmp_path/'runs'/name.replace(' ', '_')
        refused(cli('train', '--method', 'coop', '--dataset', f'folder:{folder}', '--protocol', 'base2new', *extra, '--out', out), *words)
        assert tree(folder) == before, name  # no split file, nothing changed
        assert not out.exists(), name

def test_a_split_file_that_disagrees_with_the_folder_is_refused_and_kept(tmp_path):
    folder = photos(tmp_path/'imgs', {'cat': 8, 'dog': 8})
    args = ['train', '--method', 'zeroshot', '--dataset', f'folder:{folder}', '--shots', 2]
    assert cli(*args, '--out', tmp_path/'a').returncode == 0
    split = (folder/'split_vlprompt.json').read_bytes()
    (folder/'dog'/'003.png').unlink(); photos(tmp_path/'imgs', {'bird': 8})
    msg = refused(cli(*args, '--out', tmp_path/'b'), 'split_vlprompt.json', str(folder), 'disagrees', "'dog/003.png'", 'bird/')
    assert 'never overwrites' in msg
    assert (folder/'split_vlprompt.json').read_bytes() == split and not (tmp_path/'b').exists()

def test_template_without_a_slot_and_an_empty_folder_name():
    refused(cli('train', '--method', 'zeroshot', '--dataset', 'micro-pairs', '--template', 'a photo', '--out', 'never'), 'has no {}')
    refused(cli('train', '--method', 'zeroshot', '--dataset', 'folder:', '--out', 'never'), 'folder: needs a path')
    assert not Path('never').exists()

def fake_coop_root(root: Path) -> dict:
    "Fake CoOp layouts with one planted fault each (and one clean): dataset -> words the check must report."
    from vlprompt.data import make_fake_dataset
    for n in ('oxford_pets', 'dtd', 'eurosat', 'caltech101', 'fgvc_aircraft', 'stanford_cars', 'imagenet_a'): make_fake_dataset(n, root)
    first = lambda d: sorted((root/d).rglob('*.jpg'))[0]
    missing, empty, garbled = first('oxford_pets'), first('stanford_cars'), first('eurosat')
    missing.unlink(); empty.write_bytes(b''); garbled.write_bytes(b'\xff\xd8\xff not really a jpeg')
    (root/'dtd'/'split_zhou_DescribableTextures.json').unlink()
    (root/'fgvc_aircraft'/'images_variant_val.txt').unlink()
    return {'oxford_pets': ['missing', missing.name], 'stanford_cars': ['empty (0 bytes)', empty.name],
            'eurosat': ['do not decode', garbled.name], 'dtd': ['split_zhou_DescribableTextures.json missing'],
            'fgvc_aircraft': ['images_variant_val.txt missing'], 'sun397': ['sun397/ not found']}

def test_data_check_names_every_planted_fault(tmp_path, monkeypatch, capsys):
    from vlprompt import cli as vcli, data
    faults = fake_coop_root(tmp_path)
    fake = (3, 12, 6, 9)  # the fakes' counts: 3 classes, 4 / 2 / 3 images each
    monkeypatch.setattr(data, 'EXPECTED_COUNTS', {**{n: fake for n in data.EXPECTED_COUNTS}, 'imagenet_a': (3, 0, 0, 9)})
    names = [*faults, 'caltech101', 'imagenet_a']
    with pytest.raises(SystemExit) as stop: vcli.main(['data', 'check', '--data-root', str(tmp_path), '--datasets', *names])
    assert stop.value.code == 1
    out = capsys.readouterr().out
    rows = {l.split('|')[1].strip(): l for l in out.splitlines() if l.startswith('| ') and not l.startswith('| dataset')}
    assert set(rows) == set(names)
    for name, words in faults.items():
        assert (' FAIL ' in rows[name] or ' missing ' in rows[name]) and all(w in rows[name] for w in words), (name, rows[name])
    for clean in ('caltech101', 'imagenet_a'): assert rows[clean].split('|')[2].strip() == 'ok', rows[clean]
    assert 'jessicali9530' in rows['stanford_cars'] and 'opendatalab' in rows['sun397'] and 'drive.google.com' in rows['dtd']
    # with the papers' counts, a fake of 3 classes is reported as such
    monkeypatch.undo()
    assert '3 classes, expected 102' in data.check_dataset('oxford_flowers', data.make_fake_dataset('oxford_flowers', tmp_path).parent)['problems'][0]

def test_reproduce_stops_on_the_data_check_before_anything_trains(tmp_path):
    from vlprompt.data import make_fake_dataset
    make_fake_dataset('dtd', tmp_path/'data')  # 3 classes where the papers' split has 47: the check fails
    out = tmp_path/'runs'
    res = cli('reproduce', '--protocol', 'base2new', '--methods', 'zeroshot', '--datasets', 'dtd', 'micro-shapes', '--seeds', 1,
              '--data-root', tmp_path/'data', '--out', out)
    refused(res, 'The data check failed for dtd', 'nothing was trained', '--no-data-check')
    assert '| dtd | FAIL | 3 classes, expected 47' in res.stderr
    assert not out.exists()

def test_data_check_without_a_data_root_is_refused(tmp_path):
    refused(cli('data', 'check'), 'No data root given')
    refused(cli('data', 'check', '--data-root', tmp_path/'nowhere'), 'is not a folder', 'nowhere')

@pytest.mark.parametrize('method,protocol', [('maple', 'base2new'), ('linprobe', 'fewshot'), ('cocoop', 'xd')])
def test_prompted_encoders_probes_and_other_protocols_run_on_a_folder(tmp_path, method, protocol):
    "A folder on the micro CLIP takes the micro schedule (MaPLe's paper depth 9 does not fit 4 layers); `eval` gives the run's numbers."
    import warnings
    from vlprompt import bench
    folder = micro_photos(tmp_path/'imgs', classes=(0, 9, 18, 27), per_class=12)
    s = bench.run_settings(method, protocol, f'folder:{folder}', 4, 1, train=dict(epochs=1))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # val: 2 images a class, fewer than min(K, 4) = 4
        m = bench.run(s, tmp_path/'run', cache_dir=tmp_path/'cache', progress=False)
        again = bench.evaluate_run(tmp_path/'run')
    keys = ('base', 'new') if protocol == 'base2new' else ('accuracy',)
    assert all(m[k] > 40 for k in keys), m  # 2 or 4 classes of the micro world: well above chance
    assert {k: again[k] for k in keys} == {k: m[k] for k in keys}
