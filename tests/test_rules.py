"""A gradient rule is a run setting (issue 19, goal 2): `--rule prograd` wraps any method with learnable
tensors, its options come through `--set`, and the rule is part of the run's identity (config, folder,
table row). `prograd` stays ProGrad's paper setting (CoOp student, ProGrad's init, the rule)."""
import json
import pytest
from vlprompt import bench, cli
from vlprompt.clip import VLPromptError
from vlprompt.methods.prograd import ProGradRule

def test_the_rule_is_part_of_the_run_identity():
    plain = bench.run_settings('cocoop', 'base2new', 'micro-pairs', 16, 1)
    ruled = bench.run_settings('cocoop', 'base2new', 'micro-pairs', 16, 1, rule='prograd')
    assert 'rule' not in plain  # runs without a rule keep their settings and folders
    assert ruled['rule'] == 'prograd' and ruled['method_options'] == {**plain['method_options'],
                                                                     'lam': 1.0, 'temperature': 1.0}
    assert bench.run_dir('R', plain) != bench.run_dir('R', ruled)
    assert 'ruleprograd' in bench.run_dir('R', ruled).name
    lam = bench.run_settings('cocoop', 'base2new', 'micro-pairs', 16, 1, rule='prograd',
                             method_options=dict(lam=0.5))
    assert lam['method_options']['lam'] == 0.5 and bench.run_dir('R', lam) != bench.run_dir('R', ruled)

def test_the_rule_reaches_the_training_step():
    s = bench.run_settings('maple', 'base2new', 'micro-pairs', 16, 1, rule='prograd',
                           method_options=dict(lam=0.25, temperature=2.0))
    clip = bench.get_clip('micro')
    data = bench.subsample_classes(bench.load_dataset('micro-pairs'), 'base')
    method, rule = bench.build_run(s, clip, data)
    assert type(method).__name__ == 'MaPLe' and isinstance(rule, ProGradRule)
    assert (rule.lam, rule.temperature) == (0.25, 2.0) and rule.image_encoder is not None  # MaPLe takes images
    plain, ce = bench.build_run(bench.run_settings('maple', 'base2new', 'micro-pairs', 16, 1), clip, data)
    assert ce is bench.cross_entropy_rule

def test_bad_rules_are_refused():
    with pytest.raises(VLPromptError, match="Did you mean 'prograd'"):
        bench.run_settings('coop', 'base2new', 'micro-pairs', 16, 1, rule='prograde')
    with pytest.raises(VLPromptError, match='its own gradient rule'):
        bench.run_settings('prograd', 'base2new', 'micro-pairs', 16, 1, rule='prograd')
    s = bench.run_settings('zeroshot', 'base2new', 'micro-pairs', 16, 1, rule='prograd')
    data = bench.subsample_classes(bench.load_dataset('micro-pairs'), 'base')
    with pytest.raises(VLPromptError, match='no learnable tensors'):
        bench.build_run(s, bench.get_clip('micro'), data)

def test_cocoop_and_maple_with_the_rule_train_and_get_their_own_rows(tmp_path, capsys):
    for method in ('cocoop', 'maple'):
        cli.main(['train', '--method', method, '--rule', 'prograd', '--protocol', 'base2new',
                  '--dataset', 'micro-pairs', '--shots', '1', '--set', 'epochs=1', 'lam=0.5',
                  '--out', str(tmp_path/'runs'/method)])
        m = json.loads((tmp_path/'runs'/method/'metrics.json').read_text())
        assert m['settings']['rule'] == 'prograd' and m['settings']['method_options']['lam'] == 0.5
        assert 0 <= m['conflict_fraction'] <= 1 and 0 < m['base'] <= 100
    capsys.readouterr()
    cli.main(['table', str(tmp_path/'runs')])
    rows = [line for line in capsys.readouterr().out.splitlines() if 'rule=prograd' in line]
    assert len(rows) == 2 and {r.split(' | ')[1].split(' ')[0] for r in rows} == {'cocoop', 'maple'}
    assert all(r.rstrip(' |').endswith('—') for r in rows)  # not the method's paper numbers
