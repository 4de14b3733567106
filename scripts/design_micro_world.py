"""Measure issue 20's goal rows (base-to-new, 16 shots) on a candidate micro world.

A candidate is a micro CLIP checkpoint (the shipped one, or one pretrained by `--pretrain`) and a micro
task. Since issue 20 landed, the default world is the search's candidate H on noisy photos
(`micro-pairs`); the captions of the other candidates are `micro.CAPTION_SETS` (H's were this script's
`SPLIT_CAPTIONS['dense-base-sparse-new']`, now the set 'default'; I's 'sparse-base-rare-new'), and the
old world's clean photos are the design task `micro-pairs-clean` (`micro-pairs-noisy` of the search
is today's `micro-pairs`). Every run goes through the kit's own code path (`vlprompt.bench.run`, the methods' paper configs
for the micro world), in memory, with the image features cached under `--cache`.

    python scripts/design_micro_world.py --tasks micro-pairs --seeds 1 2
    python scripts/design_micro_world.py --pretrain sparse-colour --out /tmp/clip_sparse_colour.pt
    python scripts/design_micro_world.py --checkpoint /tmp/clip_x.pt --tasks TASK --seeds 7 8 9

Results are appended, one JSON line per run, to `--log`.
"""
from __future__ import annotations
import argparse, json, os, statistics, sys, time
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch

torch.set_num_threads(1)

from vlprompt import bench, data, micro  # noqa: E402


def register_design_tasks():
    "Make micro.DESIGN_TASKS runnable by the kit in this process (the default task list is not changed on disk)."
    for name, task in micro.DESIGN_TASKS.items():
        micro.MICRO_TASKS.setdefault(name, task)
        data.DATASETS.setdefault(name, data.DatasetSpec(name, 'micro', 'micro', n_classes=len(task.classnames)))

METHODS = {  # name -> (kit method, options): the goal rows of issue 20
    'zeroshot': ('zeroshot', {}),
    'coop': ('coop', {}),
    'cocoop': ('cocoop', {}),
    'prograd': ('prograd', {}),  # lambda = 1
    'prograd_l0': ('prograd', dict(lam=0.0)),  # the same student without the projection
    'taskres': ('taskres', {}),  # alpha = 0.5
    'taskres_a0.1': ('taskres', dict(alpha=0.1)),
    'taskres_a1': ('taskres', dict(alpha=1.0)),
    'maple': ('maple', {}),
    'maple_j1': ('maple', dict(depth=1)),
    'maple_j4': ('maple', dict(depth=4)),
    'coop_paper': ('coop', {}, dict(epochs=200, lr=0.002)),  # CoCoOp's CoOp schedule instead of the micro override
    'prograd_paper': ('prograd', {}, dict(epochs=200, lr=0.002)),
    'prograd_l0_paper': ('prograd', dict(lam=0.0), dict(epochs=200, lr=0.002)),
    'coop_m16': ('coop', dict(n_ctx=16, ctx_init=None)),
}


def measure(task: str, method: str, seed: int, checkpoint: str | None, cache: str, **train) -> dict:
    "One base-to-new run of `method` on micro task `task` with the given CLIP checkpoint."
    kit_method, options, *extra = METHODS[method]
    train = {**(extra[0] if extra else {}), **train}
    s = bench.run_settings(kit_method, 'base2new', task, 16, seed, train=train, method_options=options)
    start = time.time()
    m = bench.run(s, checkpoint=checkpoint, progress=False, cache_dir=cache)
    return dict(task=task, method=method, seed=seed, checkpoint=checkpoint or 'micro_clip.pt', train=train,
                base=round(m['base'], 2), new=round(m['new'], 2), hm=round(m['hm'], 2),
                seconds=round(time.time() - start, 1))


def summary(rows: list[dict]) -> str:
    "A markdown table: mean ± std over seeds of base / new / HM per (task, method)."
    groups: dict = {}
    for r in rows: groups.setdefault((r['task'], r['method']), []).append(r)
    out = ['| task | method | seeds | base | new | HM |', '|---|---|---|---|---|---|']
    for (task, method), rs in groups.items():
        def ms(k):
            v = [r[k] for r in rs]
            return f'{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}' if len(v) > 1 else f'{v[0]:.1f}'
        out.append(f"| {task} | {method} | {' '.join(str(r['seed']) for r in rs)} | {ms('base')} | {ms('new')} | {ms('hm')} |")
    return '\n'.join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--checkpoint', default=None, help='micro CLIP checkpoint (default: the shipped micro_clip.pt)')
    ap.add_argument('--tasks', nargs='*', default=[], help='micro tasks to measure')
    ap.add_argument('--methods', nargs='*', default=['zeroshot', 'coop', 'cocoop', 'prograd', 'prograd_l0', 'taskres'])
    ap.add_argument('--seeds', nargs='*', type=int, default=[1, 2])
    ap.add_argument('--epochs', type=int, default=None, help='override every method\'s epochs (quick looks only)')
    ap.add_argument('--cache', default='/tmp/micro_design_cache')
    ap.add_argument('--log', default='/tmp/micro_design.jsonl')
    ap.add_argument('--pretrain', default=None,
                    help='caption set to pretrain a candidate CLIP with (micro.CAPTION_SETS)')
    ap.add_argument('--web-noise', type=float, default=0.0, help='Gaussian noise on the web images while pretraining')
    ap.add_argument('--steps', type=int, default=500)
    ap.add_argument('--out', default=None, help='where --pretrain writes the checkpoint')
    ap.add_argument('--summarize', nargs='*', default=None, help='only print the tables of these JSON-lines logs')
    args = ap.parse_args(argv)
    if args.summarize is not None:
        rows = [json.loads(l) for p in args.summarize for l in Path(p).read_text().splitlines() if l.strip()]
        rows = list({(r['task'], r['method'], r['seed'], r['checkpoint']): r for r in rows}.values())  # a rerun replaces
        for ckpt in dict.fromkeys(r['checkpoint'] for r in rows):
            print(f'\nCLIP: {ckpt}\n' + summary([r for r in rows if r['checkpoint'] == ckpt]))
        return
    register_design_tasks()
    if args.pretrain:
        if not args.out: raise SystemExit('error: --pretrain needs --out (a new file; the shipped micro_clip.pt is never overwritten)')
        info = micro.pretrain_world_clip(args.out, args.pretrain, args.web_noise, args.steps,
                                         tasks=('micro-pairs', 'micro-colours', 'micro-shapes',
                                                'micro-pairs-clean'))
        print(f"pretrained {args.steps} steps in {info['seconds']:.0f} s ({info['threads']} threads); wrote {args.out}", flush=True)
        print(micro.format_table(info['zeroshot']), flush=True)
    rows = []
    for task in args.tasks:
        for method in args.methods:
            for seed in args.seeds:
                if method == 'zeroshot' and seed != args.seeds[0]:  # zero-shot does not depend on the seed
                    rows.append(dict(rows[-1], seed=seed)); continue
                train = dict(epochs=args.epochs) if args.epochs and method != 'zeroshot' else {}
                r = measure(task, method, seed, args.checkpoint, args.cache, **train)
                rows.append(r)
                with open(args.log, 'a') as f: f.write(json.dumps(r) + '\n')
                print(json.dumps(r), flush=True)
    if rows: print(summary(rows))


if __name__ == '__main__': main()
