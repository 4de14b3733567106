"""The widgets as a student meets them: every widget notebook run in JupyterLab, in headless Chromium driven by
Playwright, each slider moved with the keyboard on its focused handle and each dropdown picked, and what appears
under the sliders checked against the importable function behind them, computed again in a separate process.

Screenshots before and after each move go to $VLPROMPT_SCREENSHOTS (default .cache/widget-screenshots, not committed).
Every request the page makes must go to 127.0.0.1, except for the images the notebooks' own markdown shows (the Colab
badge), which the page may ask for and this test refuses (the browser resolves no name but 127.0.0.1). Without Chromium (/usr/bin/chromium, or $VLPROMPT_CHROMIUM),
Playwright or JupyterLab the test skips with the reason, except under CI=true, where it fails.
Run `python tests/test_widgets_browser.py expected OUT.json` to print what each readout must say."""
from __future__ import annotations
import json, os, re, secrets, shutil, socket, subprocess, sys, tempfile, time, urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get('VLPROMPT_CHROMIUM', '/usr/bin/chromium')
SCREENSHOTS = Path(os.environ.get('VLPROMPT_SCREENSHOTS') or ROOT / '.cache' / 'widget-screenshots')
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                  '--disable-sync', '--no-first-run', '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1',
                  '--disable-background-timer-throttling', '--disable-renderer-backgrounding']  # two notebooks' pages at once
KERNEL_ENV = dict(IN_TEST='1', OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')  # the notebooks shrink their work, as under nbdev_test
# seconds; a move can train a setting on the spot (14_maple's n_ctx = 1: 162 s alone on an idle 2-core machine), and
# a machine busy with other work takes several times that: the waits are for a stuck page, not for a slow one
RUN_ALL_TIMEOUT = float(os.environ.get('VLPROMPT_RUN_ALL_TIMEOUT', 1800))
MOVE_TIMEOUT = float(os.environ.get('VLPROMPT_MOVE_TIMEOUT', 900))

def markdown_images(nb: Path) -> set[str]:
    "The addresses of the images that a notebook's markdown cells show, such as its Colab badge."
    cells = json.loads(nb.read_text())['cells']
    return {u for c in cells if c['cell_type'] == 'markdown' for u in re.findall(r'!\[[^\]]*\]\(([^)\s]+)', ''.join(c['source']))}

def off_machine(url: str) -> bool:
    return urlparse(url).scheme not in ('data', 'blob', 'about') and urlparse(url).hostname != '127.0.0.1'

# ---- what each widget must show: the importable function behind it, at the notebooks' IN_TEST sizes ----
def coop(**s):
    from vlprompt.bench import base_to_new
    return base_to_new('coop', ctx_init=None, epochs=3, **s)

def prograd(**s):
    from vlprompt.bench import base_to_new
    return base_to_new('prograd', epochs=2, **s)

def taskres(**s):
    from vlprompt.widgets import slider
    taskres_setting = slider('taskres_setting')
    return taskres_setting(**s)

def taskres_trained(**s):
    from vlprompt.widgets import slider
    taskres_trained_setting = slider('taskres_trained_setting')
    return taskres_trained_setting(**s)

def maple(**s):
    from vlprompt.widgets import slider
    maple_setting = slider('maple_setting')
    return maple_setting(shots=2, epochs=1, **s)

def spt(**s):
    from vlprompt.methods.vpt import micro_spt_run
    from vlprompt.widgets import slider
    spt_setting = slider('spt_setting')
    run = dict(epochs=1, shots=2)  # 15_vpt_spt's RUN under IN_TEST; its TARGET is 90% of VPT's (deep, N = 4, seed 1) final accuracy
    target = 0.9 * micro_spt_run('xavier', n_prompts=4, deep=True, head='linear', seed=1, **run)['curve'][-1]['accuracy']
    return spt_setting(target=target, **run, **s)

@dataclass
class Move:
    control: str  # the control's description
    key: str | None  # pressed on the focused slider handle; None: a dropdown, picked by its label
    value: object  # the setting afterwards
    shows: str  # what the control shows afterwards

@dataclass
class Widget:
    run: object
    fmt: str
    start: dict
    moves: list[Move]
    plot: bool = True

ALPHA = "α' = {alpha:.2f}: base {base:.1f}%, new {new:.1f}%"
NOTEBOOKS = {  # the `#| eval: false` cells that call explorer(...), in order
    '11_coop.ipynb': [Widget(coop, 'M = {n_ctx}, {shots} shots: base {base:.1f}%, new {new:.1f}%, HM {hm:.1f}', dict(n_ctx=4, shots=16),
                             [Move('n_ctx', 'ArrowRight', 8, '8'), Move('shots', 'ArrowLeft', 2, '2')])],
    '12_prograd.ipynb': [Widget(prograd, 'λ = {lam:.2f}: base {base:.1f}%, new {new:.1f}%, HM {hm:.1f}, conflicting steps {conflict_fraction:.0%}',
                                dict(lam=1.0), [Move('lam', 'ArrowLeft', 0.0, '0.0')])],
    '13_taskres.ipynb': [Widget(taskres, ALPHA, dict(alpha=0.5), [Move('alpha', 'ArrowRight', 0.55, '0.55')]),
                         Widget(taskres_trained, ALPHA + ', |αx|/|t| = {relative:.3f}', dict(alpha=0.1), [Move('alpha', None, 0.5, '0.5')])],
    '14_maple.ipynb': [Widget(maple, 'J = {depth}, n_ctx = {n_ctx}: base {base:.1f}%, new {new:.1f}%, HM {hm:.1f}; {params:,} learnable numbers',
                              dict(depth=3, n_ctx=2), [Move('depth', 'ArrowLeft', 1, '1'), Move('n_ctx', 'ArrowLeft', 1, '1')])],
    '15_vpt_spt.ipynb': [Widget(spt, '{depth} N={n_prompts}, {init}: test accuracy {accuracy:.1f}%, epochs to target {reach}\n'
                                     '  NMI {nmi_start:.3f} -> {nmi_end:.3f}  {nmi_curve}   accuracy by epoch {acc_curve}',
                                dict(n_prompts=4, depth='deep', init='xavier'),
                                [Move('n_prompts', None, 8, '8'), Move('depth', None, 'shallow', 'shallow'), Move('init', None, 'kmeans', 'kmeans')],
                                plot=False)],
}

def settings_after(w: Widget) -> list[dict]:
    "The sliders' settings at the start and after each move."
    out, s = [dict(w.start)], dict(w.start)
    for m in w.moves: s = {**s, m.control: m.value}; out.append(dict(s))
    return out

def expected_texts() -> dict:
    "{notebook: [[readout at the start, after move 1, ...] per widget]}: the functions' own answers, formatted."
    return {nb: [[w.fmt.format(**w.run(**s)).strip() for s in settings_after(w)] for w in ws] for nb, ws in NOTEBOOKS.items()}

def widget_cells(nb_path: Path) -> list[int]:
    "Indices of the cells that show a widget: `#| eval: false` cells calling explorer(...)."
    cells = json.loads(nb_path.read_text())['cells']
    return [i for i, c in enumerate(cells) if c['cell_type'] == 'code' and ''.join(c['source']).lstrip().startswith('#| eval: false')
            and 'explorer(' in ''.join(c['source'])]

# ---- the browser session ----
def missing() -> str | None:
    "Why the browser test cannot run here, or None."
    for module, pkg in (('playwright.sync_api', 'playwright'), ('jupyterlab', 'jupyterlab'), ('ipywidgets', 'ipywidgets')):
        try: __import__(module)
        except ImportError: return f'the {pkg} package is not installed (pip install -e ".[dev]", as `make test` does)'
    if not Path(CHROMIUM).exists():
        return f'no Chromium at {CHROMIUM} (Debian: apt-get install chromium, which `make test` does as root; or set VLPROMPT_CHROMIUM)'
    return None

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def widget_share_dirs() -> list[str]:
    "share/jupyter of the environment holding jupyterlab_widgets (the widget front-end), for JupyterLab's extension search path."
    import jupyterlab_widgets
    share = Path(jupyterlab_widgets.__file__).resolve().parents[4] / 'share' / 'jupyter'
    return [str(share)] if share.exists() else []

class Lab:
    "JupyterLab on 127.0.0.1 with a random token and port, over a temporary folder holding copies of the widget notebooks."
    def __init__(self, notebooks):
        self.dir = Path(tempfile.mkdtemp(prefix='vlprompt-lab-'))
        self.root = self.dir / 'nbs'; self.root.mkdir()
        for nb in notebooks: shutil.copy(ROOT / 'nbs' / nb, self.root / nb)
        settings = self.dir / 'settings' / '@jupyterlab' / 'notebook-extension'; settings.mkdir(parents=True)
        (settings / 'tracker.jupyterlab-settings').write_text(json.dumps({'windowingMode': 'none'}))  # every cell in the page
        self.token, self.port = secrets.token_hex(16), free_port()
        env = {k: v for k, v in os.environ.items() if k not in ('MPLBACKEND', 'JUPYTER_TOKEN')}
        env.update(KERNEL_ENV, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p]),
                   JUPYTER_CONFIG_DIR=str(self.dir / 'config'), JUPYTER_RUNTIME_DIR=str(self.dir / 'runtime'),
                   JUPYTERLAB_SETTINGS_DIR=str(self.dir / 'settings'), JUPYTERLAB_WORKSPACES_DIR=str(self.dir / 'workspaces'),
                   IPYTHONDIR=str(self.dir / 'ipython'),
                   JUPYTER_PATH=os.pathsep.join(widget_share_dirs() + [p for p in [os.environ.get('JUPYTER_PATH')] if p]))
        cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={self.port}',
               '--ServerApp.port_retries=0', f'--IdentityProvider.token={self.token}', f'--ServerApp.root_dir={self.root}',
               '--LabApp.extension_manager=readonly', '--LabApp.news_url=', '--ServerApp.open_browser=False',
               '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate']
        if hasattr(os, 'geteuid') and os.geteuid() == 0: cmd.append('--allow-root')
        self.log = open(self.dir / 'lab.log', 'w')
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.root)
        self.url = f'http://127.0.0.1:{self.port}'
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f'{self.url}/api/status?token={self.token}', timeout=5); break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f'JupyterLab did not start:\n{(self.dir / "lab.log").read_text()[-3000:]}')
                time.sleep(0.3)
    def api(self, path: str, method: str = 'GET'):
        req = urllib.request.Request(f'{self.url}{path}', method=method, headers={'Authorization': f'token {self.token}'})
        with urllib.request.urlopen(req, timeout=30) as r: body = r.read()
        return json.loads(body) if body else None
    def close(self):
        self.proc.terminate()
        try: self.proc.wait(30)
        except subprocess.TimeoutExpired: self.proc.kill()
        self.log.close(); shutil.rmtree(self.dir, ignore_errors=True)

def wait_for(what: str, check, timeout: float, every: float = 0.25):
    "Poll `check()` until it returns something truthy; fail with `what` and the last value after `timeout` seconds."
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        last = check()
        if last: return last
        time.sleep(every)
    raise AssertionError(f'timed out after {timeout:.0f}s waiting for {what} (last seen: {last!r})')

def output_text(box) -> str:
    "What the widget prints under its sliders (the Output's text outputs)."
    return '\n'.join(t.strip() for t in box.locator('.widget-output .jp-RenderedText').all_inner_texts()).strip()

def output_image(box) -> str | None:
    imgs = box.locator('.widget-output img')
    return imgs.first.get_attribute('src') if imgs.count() else None

def control_shows(control) -> str:
    "A control's visible value: a slider's readout, or a dropdown's selected option."
    if control.locator('select').count():
        return control.locator('select').evaluate('s => s.options[s.selectedIndex].text')
    return control.locator('.widget-readout').first.inner_text().strip()

def start_run_all(page, lab: Lab, nb: str):
    "Open a notebook, wait for its kernel to be idle with no dialog open (before that, Run All opens a kernel dialog), and Run All."
    page.goto(f'{lab.url}/lab/tree/{nb}?reset&token={lab.token}')  # reset: no tab of an earlier notebook restored
    page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=120_000)
    status = lambda: page.locator('#jp-main-statusbar').inner_text()
    wait_for('the kernel to be idle', lambda: re.search(r'Python 3 \(ipykernel\) \| Idle', status()) and page.locator('.jp-Dialog').count() == 0, 180)
    page.locator('.lm-MenuBar-item', has_text='Run').first.click()
    page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
    wait_for('Run All to start', lambda: any('*' in p for p in prompts(page)) or all(re.fullmatch(r'\[\d+\]:', p.strip()) for p in prompts(page)), 60)

def prompts(page) -> list[str]:
    return page.locator('.jp-Notebook .jp-CodeCell .jp-InputPrompt').all_inner_texts()

def finish_run_all(page, nb: str, n_cells: int):
    "Wait for every cell to finish; fail if any did not run or raised."
    wait_for(f'every cell of {nb} to finish', lambda: not any('*' in p for p in prompts(page)), RUN_ALL_TIMEOUT, every=1)
    assert page.locator('.jp-Notebook .jp-Cell').count() == n_cells, 'every cell is in the page'
    unrun = [p for p in prompts(page) if not re.fullmatch(r'\[\d+\]:', p.strip())]
    errors = [t for t in page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
              if 'Traceback' in t]
    assert not unrun and not errors, f'{nb}: Run All stopped ({len(unrun)} cells not run):\n' + '\n'.join(e[-1500:] for e in errors)

def drive(page, nb: str, cell: int, k: int, widget: Widget, texts: list[str], log: list):
    "Move every control of one widget and check each readout against the function's own answer."
    stem = nb.removesuffix('.ipynb')
    boxes = page.locator('.jp-Notebook .jp-Cell').nth(cell).locator('.vlprompt-explorer')
    assert boxes.count() >= 1, f'{nb}: cell {cell} shows no explorer'
    box = boxes.first  # (ipywidgets 8 puts the class on the box and on its Lumino wrapper)
    box.scroll_into_view_if_needed()
    wait_for(f'{nb} widget {k} to show its first result', lambda: output_text(box) == texts[0], MOVE_TIMEOUT)
    image = output_image(box)
    assert (image is not None) == widget.plot, f'{nb} widget {k}: a figure expected: {widget.plot}'
    for i, (move, text) in enumerate(zip(widget.moves, texts[1:]), 1):
        control = box.locator('.widget-inline-hbox').filter(has=page.get_by_text(move.control, exact=True)).first
        shot = SCREENSHOTS / f'{stem}-w{k}-{i}-{move.control}'
        box.screenshot(path=f'{shot}-before.png')
        start = time.time()
        if move.key is None: control.locator('select').select_option(label=move.shows)
        else:
            handle = control.locator('.noUi-handle, .ui-slider-handle').first
            handle.focus(); page.keyboard.press(move.key)
        wait_for(f'{nb} {move.control} to show {move.shows}', lambda: control_shows(control) == move.shows, 120)
        got = wait_for(f'{nb} widget {k} to show the result for {move.control} = {move.value}',
                       lambda: output_text(box) == text and (not widget.plot or output_image(box) not in (None, image)) and output_text(box), MOVE_TIMEOUT)
        log.append(f'{stem} {move.control} -> {move.shows}: {time.time() - start:.2f}s  {got.splitlines()[0]}')
        box.screenshot(path=f'{shot}-after.png')
        if widget.plot:
            new_image = output_image(box)
            assert new_image != image, f'{nb}: the figure did not change when {move.control} moved'
            image = new_image

# ---- the tests ----
import pytest

class Notebooks:
    "Run All in up to two notebooks at once (one kernel per core); a test drives one while the next computes."
    def __init__(self, lab: Lab, context, urls: list, parallel: int = 2):
        self.lab, self.context, self.urls, self.parallel = lab, context, urls, parallel
        self.pages, self.done, self.order = {}, set(), list(NOTEBOOKS)
    def start(self, nb: str):
        page = self.context.new_page()
        page.on('websocket', lambda ws: self.urls.append(ws.url))
        self.pages[nb] = page
        start_run_all(page, self.lab, nb)
    def ready(self, nb: str):
        "Start `nb` (and the next notebooks, up to `parallel` running) and wait for all of its cells."
        if nb not in self.pages: self.start(nb)
        for other in self.order:
            if len([n for n in self.pages if n not in self.done]) >= self.parallel: break
            if other not in self.pages: self.start(other)
        finish_run_all(self.pages[nb], nb, len(json.loads((ROOT / 'nbs' / nb).read_text())['cells']))
        return self.pages[nb]
    def close(self, nb: str):
        self.done.add(nb)
        self.pages[nb].close()
        for s in self.lab.api('/api/sessions'):
            if s['path'].endswith(nb): self.lab.api(f'/api/sessions/{s["id"]}', 'DELETE')  # its kernel too

@pytest.fixture(scope='module')
def session():
    reason = missing()
    if reason:
        if os.environ.get('CI') == 'true': pytest.fail(f'the browser test must run under CI: {reason}')
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob('*.png'): old.unlink()
    expected_file = Path(tempfile.mkstemp(suffix='.json')[1])
    env = dict(os.environ, **KERNEL_ENV, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    expected = subprocess.Popen([sys.executable, __file__, 'expected', str(expected_file)], env=env, cwd=ROOT)  # meanwhile, in its own process
    lab = Lab(NOTEBOOKS)
    urls, log, start = [], [], time.time()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        context = browser.new_context(viewport={'width': 1400, 'height': 1000})
        context.on('request', lambda r: urls.append(r.url))
        context.route(off_machine, lambda route: route.abort())  # never fetched, only recorded
        def texts():
            if expected.returncode is None: assert expected.wait(RUN_ALL_TIMEOUT) == 0, 'computing the expected readouts failed'
            return json.loads(expected_file.read_text())
        try: yield dict(lab=lab, notebooks=Notebooks(lab, context, urls), texts=texts, urls=urls, log=log)
        finally:
            browser.close(); lab.close()
            if expected.poll() is None: expected.kill()
            expected_file.unlink(missing_ok=True)
            print('\n'.join(['', f'widget moves (key press to readout); {time.time() - start:.0f}s in all, screenshots in {SCREENSHOTS}:'] + log))

@pytest.mark.parametrize('nb', list(NOTEBOOKS))
def test_widgets_in_jupyterlab(session, nb):
    cells = widget_cells(ROOT / 'nbs' / nb)
    assert len(cells) == len(NOTEBOOKS[nb]), f'{nb} has {len(cells)} widget cells; this test describes {len(NOTEBOOKS[nb])}'
    notebooks = session['notebooks']
    page = None
    try:
        page = notebooks.ready(nb)
        for k, (cell, widget) in enumerate(zip(cells, NOTEBOOKS[nb])):
            drive(page, nb, cell, k, widget, session['texts']()[nb][k], session['log'])
    except Exception:
        page = page or notebooks.pages.get(nb)
        if page: page.screenshot(path=str(SCREENSHOTS / f'{nb.removesuffix(".ipynb")}-failure.png'), full_page=True)
        raise
    finally:
        if nb in notebooks.pages: notebooks.close(nb)
    shown = set().union(*(markdown_images(ROOT / 'nbs' / name) for name in NOTEBOOKS))
    off = sorted({u for u in session['urls'] if off_machine(u)} - shown)
    assert not off, f'the page asked for addresses off this machine: {off[:10]}'
    assert any(urlparse(u).scheme == 'ws' for u in session['urls']), 'the kernel talked over a 127.0.0.1 websocket'

if __name__ == '__main__' and sys.argv[1:2] == ['expected']:
    Path(sys.argv[2]).write_text(json.dumps(expected_texts(), ensure_ascii=False))
