"""The classroom kit across notebooks: every exercise's check passes on the kit's solution and fails on the stub
and on plausible wrong answers; `vlprompt exercises` writes student notebooks that run until their first stub and
never replaces a file; every notebook opens on Colab (badge, install cell, GPU metadata that survives nbdev_clean)."""
import configparser, contextlib, inspect, io, json, math, os, shutil, subprocess, sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlprompt import classroom
from vlprompt.classroom import EXERCISES, CheckFailed, grade_notebook, notebook_module, write_exercises
from vlprompt.clip import VLPromptError

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
CHECK = {name: e.grader for name, e in EXERCISES.items()}


def solution(name):
    "The library's own function for an exercise (the notebooks export them)."
    from vlprompt.bench import harmonic_mean
    from vlprompt.data import fewshot_indices
    from vlprompt.methods.coop import CoOp
    from vlprompt.methods.clip_lora import lora_delta
    from vlprompt.methods.kgcoop import kgcoop_loss
    from vlprompt.methods.linear_heads import gda_classifier, gda_precision
    from vlprompt.methods.maple import MaPLe
    from vlprompt.methods.prograd import prograd_project
    from vlprompt.methods.promptsrc import gaussian_weights
    from vlprompt.methods.taskres import TaskRes
    from vlprompt.methods.vpt import nmi_from_joint, pool_windows
    return dict(fewshot=fewshot_indices, prompt_assembly=CoOp.prompts, prograd_project=prograd_project, kgcoop_loss=kgcoop_loss,
                taskres_classifier=TaskRes.classifier, maple_coupling=MaPLe.vision_layer_prompts, spt_pooling=pool_windows,
                nmi=nmi_from_joint, harmonic_mean=harmonic_mean,
                promptsrc_gaussian_weights=gaussian_weights, lora_delta=lora_delta,
                gda_precision=gda_precision, gda_classifier=gda_classifier)[name]


# plausible wrong answers, one or more per exercise: each must fail its check with CheckFailed
def _gauss(e, mean, std): return torch.exp(-0.5 * ((e - mean) / std) ** 2) / (std * (2 * torch.pi) ** 0.5)
def _gauss_from_0(epochs, mean=15.0, std=1.0):  # epochs counted from 0
    w = _gauss(torch.arange(epochs, dtype=torch.float64), mean, std); return w / w.sum()
def _gauss_unnormalised(epochs, mean=15.0, std=1.0): return _gauss(torch.arange(1, epochs + 1, dtype=torch.float64), mean, std)
def _gauss_variance(epochs, mean=15.0, std=1.0):  # std taken as the variance
    w = _gauss(torch.arange(1, epochs + 1, dtype=torch.float64), mean, std ** 0.5) * 0 + torch.exp(
        -0.5 * (torch.arange(1, epochs + 1, dtype=torch.float64) - mean) ** 2 / std); return w / w.sum()
def _gauss_last_epoch(epochs, mean=15.0, std=1.0): return torch.eye(epochs, dtype=torch.float64)[-1]  # no averaging
def _prograd_always(gd, gg, lam=1.0): return gd - lam * (gd * gg).sum() / gg.pow(2).sum() * gg  # projects agreeing gradients too
def _prograd_no_lambda(gd, gg, lam=1.0):
    dot = (gd * gg).sum()
    return gd if dot >= 0 else gd - dot / gg.pow(2).sum() * gg
def _prograd_rows(gd, gg, lam=1.0):  # the dot product row by row
    from vlprompt.methods.prograd import prograd_project
    return torch.stack([prograd_project(a, b, lam) for a, b in zip(gd, gg)]) if gd.dim() > 1 else prograd_project(gd, gg, lam)
def _taskres_self_alpha(self, alpha=None): return self.base + self.alpha * self.task_residual
def _taskres_unscaled(self, alpha=None): return self.base + self.task_residual
def _taskres_normalised(self, alpha=None):
    a = self.alpha if alpha is None else alpha
    return F.normalize(self.base, dim=-1) + a * F.normalize(self.task_residual, dim=-1)
def _coop_shared_ctx(self):
    from vlprompt.methods.coop import CoOp
    ctx = (self.ctx[0] if self.csc else self.ctx).unsqueeze(0).expand(len(self.classnames), -1, -1)
    if self.class_token_position == 'end': return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
    return CoOp.prompts(self)
def _coop_no_prefix(self):
    from vlprompt.methods.coop import CoOp
    ctx = self.ctx if self.csc else self.ctx.unsqueeze(0).expand(len(self.classnames), -1, -1)
    if self.class_token_position == 'end': return torch.cat([ctx, self.token_prefix, self.token_suffix], dim=1)
    return CoOp.prompts(self)
def _maple_from_context(self):
    if self.vision == 'none': return []
    if self.coupled: return [F_i(self.ctx) for F_i in self.couplings]
    return list(self.vision_prompts)
def _maple_first_layer(self):
    if self.vision == 'none': return []
    if self.coupled: return [self.couplings[0](P) for P in self.text_layer_prompts()[:len(self.couplings)]]
    return list(self.vision_prompts)
def _pool_even_always(tokens, n, how='mean', split='official'):
    from vlprompt.methods.vpt import pool_windows
    return pool_windows(tokens, n, how, 'even')
def _pool_swapped(tokens, n, how='mean', split='official'):
    from vlprompt.methods.vpt import pool_windows
    return pool_windows(tokens, n, 'max' if how == 'mean' else 'mean', split)
def _nmi_raw_mi(joint):
    from vlprompt.classroom import _nmi_variants
    return next(v for k, v in _nmi_variants(joint).items() if k.startswith('the mutual information'))
def _nmi_unnormalised(joint):
    pk, pe = joint.sum(-1, keepdim=True), joint.sum(-2, keepdim=True)
    xlogy = lambda a, b: torch.where(a > 0, a * torch.log(b.clamp_min(1e-300)), torch.zeros_like(a))
    mi, hp, he = xlogy(joint, joint / (pk * pe)).sum((-2, -1)), -xlogy(pk, pk).sum((-2, -1)), -xlogy(pe, pe).sum((-2, -1))
    d = (hp * he).sqrt()
    return torch.where(d > 0, mi / d.clamp_min(1e-300), torch.zeros_like(mi))
def _fewshot_sorted(labels, shots, rng, what='split'):
    groups = {y: [i for i, l in enumerate(labels) if l == y] for y in sorted(set(labels))}
    return [i for idx in groups.values() for i in (rng.sample(idx, shots) if len(idx) >= shots else idx)]
def _fewshot_first_k(labels, shots, rng, what='split'):  # no random draw at all
    groups = {}
    for i, y in enumerate(labels): groups.setdefault(y, []).append(i)
    return [i for idx in groups.values() for i in idx[:shots]]
def _fewshot_shuffle(labels, shots, rng, what='split'):  # a different draw from the same state
    groups = {}
    for i, y in enumerate(labels): groups.setdefault(y, []).append(i)
    out = []
    for idx in groups.values():
        idx = list(idx); rng.shuffle(idx); out += idx[:shots]
    return out

def _kgcoop_sum(t, h, w=8.0): return w * (1 - F.cosine_similarity(t, h, dim=-1)).sum()  # sums the classes
def _kgcoop_no_w(t, h, w=8.0): return 1 - F.cosine_similarity(t, h, dim=-1).mean()
def _kgcoop_raw_distance(t, h, w=8.0): return w / 2 * (t - h).pow(2).sum(-1).mean()  # not normalised

def _lora_over_r(A, B, alpha=1.0): return alpha / A.shape[0] * (B @ A)  # the LoRA paper's scale, not the code's
def _lora_unscaled(A, B, alpha=1.0): return B @ A
def _lora_transposed(A, B, alpha=1.0): return alpha / A.shape[0] ** 0.5 * (A.t() @ B.t())  # (d_in, d_out)
def _lora_detached(A, B, alpha=1.0): return (alpha / A.shape[0] ** 0.5 * (B @ A)).detach()

def _gda_means(x, y, K): return torch.stack([x[y == k].mean(0) for k in range(K)])
def _gda_no_shrinkage(x, y, K):  # the bare scatter: singular with few shots
    mu = _gda_means(x, y, K); c = x - mu[y]
    return mu, x.shape[1] * torch.linalg.pinv(c.t() @ c)
def _gda_total_scatter(x, y, K):  # centred on the mean of all features
    mu = _gda_means(x, y, K); c = x - x.mean(0); S = c.t() @ c
    return mu, x.shape[1] * torch.linalg.pinv(S + (S / (len(x) - 1)).trace() * torch.eye(x.shape[1], dtype=x.dtype))
def _gda_no_d(x, y, K):
    mu = _gda_means(x, y, K); c = x - mu[y]; S = c.t() @ c
    return mu, torch.linalg.pinv(S + (S / (len(x) - 1)).trace() * torch.eye(x.shape[1], dtype=x.dtype))
def _gda_no_prior(mu, P): return mu @ P, -0.5 * (mu @ P * mu).sum(-1)
def _gda_transposed(mu, P): return (mu @ P).t(), math.log(1 / len(mu)) - 0.5 * (mu @ P * mu).sum(-1)
def _gda_whole_quadratic(mu, P): return mu @ P, math.log(1 / len(mu)) - (mu @ P * mu).sum(-1)

WRONG = {
    'lora_delta': [_lora_over_r, _lora_unscaled, _lora_transposed, _lora_detached],
    'gda_precision': [_gda_no_shrinkage, _gda_total_scatter, _gda_no_d],
    'gda_classifier': [_gda_no_prior, _gda_transposed, _gda_whole_quadratic],
    'kgcoop_loss': [_kgcoop_sum, _kgcoop_no_w, _kgcoop_raw_distance],
    'prograd_project': [_prograd_always, _prograd_no_lambda, _prograd_rows],
    'taskres_classifier': [_taskres_self_alpha, _taskres_unscaled, _taskres_normalised],
    'prompt_assembly': [_coop_shared_ctx, _coop_no_prefix],
    'maple_coupling': [_maple_from_context, _maple_first_layer],
    'spt_pooling': [_pool_even_always, _pool_swapped],
    'nmi': [_nmi_raw_mi, _nmi_unnormalised],
    'harmonic_mean': [lambda b, n: (b + n) / 2, lambda b, n: 2 * b * n / (b + n), lambda b, n: (b * n) ** 0.5],
    'fewshot': [_fewshot_sorted, _fewshot_first_k, _fewshot_shuffle],
    'promptsrc_gaussian_weights': [_gauss_from_0, _gauss_unnormalised, _gauss_variance, _gauss_last_epoch],
}


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    out = tmp_path_factory.mktemp('lab')
    write_exercises(out, NBS)
    return out


def test_every_exercise_has_wrong_answers():
    assert set(WRONG) == set(EXERCISES)


@pytest.mark.parametrize('name', list(EXERCISES))
def test_check_passes_on_the_solution(name, capsys):
    CHECK[name](solution(name))
    assert capsys.readouterr().out.startswith(f'✓ {EXERCISES[name].check}:')


@pytest.mark.parametrize('name', list(EXERCISES))
def test_check_fails_on_the_stub(name, lab):
    "The student notebook's own stub (its exported cells run as a module) raises the exercise's NotImplementedError in the check."
    ex = EXERCISES[name]
    fn = classroom._target(notebook_module(lab/ex.notebook), ex.target)
    with pytest.raises(NotImplementedError, match=f'Exercise {name}: '):
        CHECK[name](fn)


@pytest.mark.parametrize('name, wrong', [(n, w) for n, ws in WRONG.items() for w in ws],
                         ids=[f'{n}-{i}' for n, ws in WRONG.items() for i in range(len(ws))])
def test_check_fails_on_a_wrong_answer(name, wrong):
    with pytest.raises(CheckFailed, match=EXERCISES[name].check):
        CHECK[name](wrong)


def test_markers_survive_export():
    "The markers are in the solution notebooks once each, and nbdev exported them into the library unchanged."
    for name, ex in EXERCISES.items():
        nb = classroom.read_notebook(NBS/ex.notebook)
        assert classroom.notebook_exercises(nb).count(name) == 1, name
        assert f'# exercise: {name}' in inspect.getsource(inspect.getmodule(solution(name))), name


def test_grading_solutions_and_stubs(lab):
    for notebook in sorted({e.notebook for e in EXERCISES.values()}):
        assert all(r['passed'] for r in grade_notebook(NBS/notebook, quiet=True)), notebook
        rows = grade_notebook(lab/notebook, quiet=True)
        assert rows and all(not r['passed'] and r['message'].startswith('not done yet: Exercise') for r in rows), rows


def _run_until_error(path: Path):
    "Run a notebook as scripts/run_notebook.py does (execnb's CaptureShell, eval: false / gpu / slow skipped), with IN_TEST set."
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    sys.path.insert(0, str(ROOT/'scripts'))
    from run_notebook import directives
    nb = read_nb(path)
    def skipped(cell):
        if cell.cell_type != 'code': return True
        d = directives(cell.source)
        return d.get('eval', [''])[0].lower() == 'false' or bool({'gpu', 'slow'} & d.keys())
    shell, cwd = CaptureShell(path), os.getcwd()
    os.chdir(path.parent)
    try:
        with contextlib.redirect_stdout(io.StringIO()): shell.run_all(nb, exc_stop=True, preproc=skipped)
    except Exception as e: return e
    finally: os.chdir(cwd)


@pytest.mark.parametrize('notebook', sorted({e.notebook for e in EXERCISES.values()}))
def test_student_notebook_runs_until_its_first_stub(notebook, lab, monkeypatch):
    monkeypatch.setenv('IN_TEST', '1')
    first = classroom.notebook_exercises(classroom.read_notebook(lab/notebook))[0]
    error = _run_until_error(lab/notebook)
    assert isinstance(error, NotImplementedError) and str(error).startswith(f'Exercise {first}: '), repr(error)


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path/'lab'
    written = write_exercises(out, NBS, names=['harmonic_mean'])
    assert sorted(p.name for p in written) == ['20_benchmark.ipynb', 'README.md']
    (out/'20_benchmark.ipynb').write_text('my answers')
    with pytest.raises(VLPromptError, match='nothing was written'): write_exercises(out, NBS)
    assert (out/'20_benchmark.ipynb').read_text() == 'my answers' and not (out/'12_prograd.ipynb').exists()
    write_exercises(out, NBS, names=['harmonic_mean'], overwrite=True)
    assert classroom.notebook_exercises(classroom.read_notebook(out/'20_benchmark.ipynb')) == ['harmonic_mean']
    assert not [p for p in out.iterdir() if p.name.endswith('.tmp')]  # atomic writes leave no temporary files
    with pytest.raises(VLPromptError, match='is the folder of the solution notebooks'): write_exercises(NBS, NBS, overwrite=True)
    with pytest.raises(VLPromptError, match="Did you mean 'nmi'"): write_exercises(tmp_path/'x', NBS, names=['nmii'])


def test_cli(tmp_path, capsys):
    from vlprompt.cli import main
    main(['exercises', '--out', str(tmp_path), '--only', 'prograd_project', '--nbs', str(NBS)])
    assert (tmp_path/'12_prograd.ipynb').exists() and 'wrote' in capsys.readouterr().out
    with pytest.raises(SystemExit) as e: main(['exercises', '--out', str(tmp_path), '--only', 'prograd_project', '--nbs', str(NBS)])
    assert e.value.code == 2 and 'nothing was written' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e: main(['exercises', '--grade', str(tmp_path/'12_prograd.ipynb')])
    assert e.value.code == 1 and 'FAIL' in capsys.readouterr().out
    assert main(['exercises', '--grade', str(NBS/'12_prograd.ipynb')]) is None  # passes: no exit


NOTEBOOKS = sorted(p for p in NBS.glob('*.ipynb') if p.name != 'index.ipynb')  # index.ipynb (the README) has its own badges
GPU_NOTEBOOKS = ['00_clip', '10_zeroshot', '11_coop', '12_prograd', '13_taskres', '14_maple', '15_vpt_spt',
                 '16_kgcoop']


def test_repo_is_the_one_in_settings():
    cfg = configparser.ConfigParser(); cfg.read(ROOT/'settings.ini')
    assert cfg['DEFAULT']['git_url'] == f'https://github.com/{classroom.REPO}'
    assert set(cfg['DEFAULT']['allowed_metadata_keys'].split()) >= {'accelerator', 'colab'}


@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_opens_on_colab(path):
    nb = classroom.read_notebook(path)
    first = nb['cells'][0]
    assert first['cell_type'] == 'markdown' and classroom.colab_badge(path.name) in classroom._source(first)
    assert classroom._source(first).startswith('# ')  # the title stays first: nbdev reads it as the page's title
    code = [c for c in nb['cells'] if c['cell_type'] == 'code']
    assert classroom._source(code[0]).strip() == classroom.COLAB_INSTALL_CELL.strip()  # #| eval: false, installs only on Colab
    if path.stem in GPU_NOTEBOOKS:
        assert nb['metadata'].get('accelerator') == 'GPU' and nb['metadata']['colab']['gpuType'] == 'T4'


def test_gpu_metadata_survives_nbdev_clean(tmp_path):
    nbdev_clean = Path(sys.executable).parent/'nbdev_clean'
    if not nbdev_clean.exists(): pytest.skip('nbdev_clean is not installed next to this Python')
    copy = tmp_path/'12_prograd.ipynb'
    shutil.copy(NBS/'12_prograd.ipynb', copy)
    subprocess.run([str(nbdev_clean), '--fname', str(copy)], cwd=ROOT, check=True, capture_output=True)
    meta = json.loads(copy.read_text())['metadata']
    assert meta['accelerator'] == 'GPU' and meta['colab']['gpuType'] == 'T4'


@pytest.mark.parametrize('name', GPU_NOTEBOOKS[1:])
def test_method_notebooks_have_a_gpu_check_and_gpu_cells(name):
    cells = [classroom._source(c) for c in classroom.read_notebook(NBS/f'{name}.ipynb')['cells'] if c['cell_type'] == 'code']
    check = next(i for i, s in enumerate(cells) if 'pick_world(' in s)
    assert not classroom._directives(cells[check])  # the check runs everywhere (cheap)
    assert 'gpu' in classroom._directives(cells[check + 1]) and 'real_run(' in cells[check + 1]


def test_real_run_falls_back_to_the_micro_world(tmp_path, capsys):
    if torch.cuda.is_available(): pytest.skip('this machine has a GPU: the fallback is for CPUs')
    world = classroom.pick_world('oxford_pets')
    assert world.micro and world.dataset == 'micro-pairs' and 'no GPU' in capsys.readouterr().out
    metrics = classroom.real_run('coop', world, out=tmp_path, epochs=1)
    assert 0 < metrics['hm'] <= 100 and (tmp_path/'base2new'/'micro-pairs'/'coop').exists()
    assert 'micro-pairs | coop' in capsys.readouterr().out


def _splice_solutions(student: dict, solution: dict) -> dict:
    "The student notebook with each stub replaced by the solution's lines."
    regions = {}
    for cell in solution['cells']:
        if classroom._exported(cell):
            lines = classroom._source(cell).splitlines()
            for r in classroom.find_exercises(classroom._source(cell)): regions[r['name']] = lines[r['start'] + 1:r['end']]
    for cell in student['cells']:
        if classroom._exported(cell):
            lines = classroom._source(cell).splitlines()
            for r in reversed(classroom.find_exercises(classroom._source(cell))): lines[r['start'] + 1:r['end']] = regions[r['name']]
            cell['source'] = '\n'.join(lines)
    return student


def grade_notebook_dict(nb: dict) -> list:
    "Run the checks on a notebook held in memory (all must pass)."
    module = notebook_module(nb)
    rows = []
    for name in classroom.notebook_exercises(nb):
        ex = EXERCISES[name]
        with contextlib.redirect_stdout(io.StringIO()): CHECK[name](classroom._target(module, ex.target))
        rows.append(dict(exercise=name, passed=True))
    return rows


@pytest.mark.parametrize('notebook', sorted({e.notebook for e in EXERCISES.values()}))
def test_solving_the_stubs_gives_back_the_solution(notebook, lab):
    "Only the marked lines differ: a student who writes the solution's lines has the solution notebook's code, plus the checks."
    solved = _splice_solutions(classroom.read_notebook(lab/notebook), classroom.read_notebook(NBS/notebook))
    added = lambda s: s == classroom.QUICK_CELL or (s.startswith('from vlprompt.') and ' import check_' in s)
    code = [classroom._source(c) for c in solved['cells'] if c['cell_type'] == 'code' and not added(classroom._source(c))]
    assert code == [classroom._source(c) for c in classroom.read_notebook(NBS/notebook)['cells'] if c['cell_type'] == 'code']
    assert all(r['passed'] for r in grade_notebook_dict(solved))

