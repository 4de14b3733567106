"Issue 20's search tools: candidate CLIPs go to new files and the default world stays as it was."
import json, subprocess, sys
import pytest, torch
from vlprompt import micro
from vlprompt.clip import VLPromptError, tiny_clip

def test_pretrain_world_clip_writes_a_new_file_and_restores_the_default(tmp_path):
    default, web = list(micro.CAPTION_TEMPLATES), dict(micro.STYLES['web'])
    out = tmp_path/'sparse.pt'
    info = micro.pretrain_world_clip(out, 'sparse-colour', web_noise=0.1, steps=2, tasks=('micro-shapes',))
    assert info['captions'] == 'sparse-colour' and info['web_noise'] == 0.1 and len(info['losses']) == 2
    assert micro.load_micro_weights(tiny_clip(), out)['captions'] == 'sparse-colour'
    assert micro.CAPTION_TEMPLATES == default and micro.STYLES['web'] == web
    with pytest.raises(VLPromptError, match='exists'): micro.pretrain_world_clip(out, steps=1)
    with pytest.raises(VLPromptError, match='shipped micro CLIP'): micro.pretrain_world_clip(micro.MICRO_CHECKPOINT, steps=1)
    assert not set(micro.DESIGN_TASKS) & set(micro.MICRO_TASKS)

def test_design_script_measures_a_design_task(tmp_path):
    "Zero-shot on the shape-split task (the shipped CLIP, clean photos) through the script and the kit's run."
    log = tmp_path/'log.jsonl'
    res = subprocess.run([sys.executable, 'scripts/design_micro_world.py', '--tasks', 'micro-shapesplit', '--methods', 'zeroshot',
                          '--seeds', '1', '--cache', str(tmp_path/'cache'), '--log', str(log)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    row = json.loads(log.read_text().splitlines()[0])
    assert row['task'] == 'micro-shapesplit' and row['method'] == 'zeroshot'
    assert 85 <= row['base'] <= 100 and 85 <= row['new'] <= 100, row  # the default CLIP knows these classes
    assert '| micro-shapesplit | zeroshot | 1 |' in res.stdout

def test_caption_sets_swap_both_lists_and_restore_the_default():
    "Candidate I's captions: rare colours named in 1 caption of 37; the default world restored after."
    import random
    default = list(micro.CAPTION_TEMPLATES)
    with micro.world_captions('sparse-base-rare-new'):
        attrs = micro.twin_batch(4000, torch.Generator().manual_seed(0))
        caps, which = micro.captions(attrs, random.Random(0))
        truth = micro.caption_truth(attrs, which)
    rare = torch.isin(attrs['colour'], torch.tensor([list(micro.COLOURS).index(c) for c in micro.RARE_COLOURS]))
    named = torch.tensor([list(micro.COLOURS)[c] in cap.replace('.', ' ').split()
                          for c, cap in zip(attrs['colour'].tolist(), caps)])
    assert 0.05 < named[~rare].float().mean() < 0.2 and named[rare].float().mean() < 0.06
    assert truth.diagonal().all()  # every caption is true of its own image
    assert micro.CAPTION_TEMPLATES == default
