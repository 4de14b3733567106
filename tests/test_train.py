"The training loop across processes: a run killed with SIGKILL resumes to the uninterrupted result."
import os, signal, subprocess, sys, textwrap, time
from pathlib import Path
import pytest, torch

SCRIPT = textwrap.dedent('''
    import sys, time, torch, torch.nn as nn
    from vlprompt.train import TrainConfig, TrainSet, fit, evaluate
    from vlprompt.clip import clip_logits
    torch.manual_seed(0)
    features, labels = torch.randn(1, 256, 16), torch.arange(256) % 8
    class Probe(nn.Module):
        needs_images = False
        def __init__(self):
            super().__init__(); self.weights = nn.Parameter(torch.randn(8, 16, generator=torch.Generator().manual_seed(1)))
        def forward(self, x):
            time.sleep(float(sys.argv[2]))  # slow enough to be killed mid-run
            return clip_logits(x, self.weights, 10.)
    probe = Probe()
    fit(probe, TrainSet(features, labels), TrainConfig(epochs=6, batch_size=64, lr=0.5, seed=4), out=sys.argv[1], progress=False)
    torch.save(probe.weights.detach(), sys.argv[1] + '/final.pt')
''')

def run(out, delay, **kw):
    return subprocess.Popen([sys.executable, '-c', SCRIPT, str(out), str(delay)], **kw)

def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    straight = tmp_path/'straight'
    assert run(straight, 0).wait(timeout=120) == 0
    killed = tmp_path/'killed'
    proc = run(killed, 0.05)
    deadline = time.time() + 60
    while not (killed/'checkpoint.pt').exists() and time.time() < deadline: time.sleep(0.05)
    time.sleep(0.3)  # somewhere in a later epoch, possibly while writing
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (killed/'final.pt').exists()
    for f in killed.iterdir():  # every file left is readable
        if f.suffix == '.pt': torch.load(f, weights_only=True)
    assert run(killed, 0).wait(timeout=120) == 0
    assert torch.equal(torch.load(killed/'final.pt'), torch.load(straight/'final.pt'))
