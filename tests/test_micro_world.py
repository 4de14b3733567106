"""Issue 20's cheap proxy of the micro world's goal rows (one seed, fewer epochs): the default world
leaves zero-shot CLIP room to learn, and CoOp learns the base classes while forgetting new ones.
On the world before issue 20 (zero-shot 88.1 / 91.0, CoOp +0.8 / -1.1) every assertion here fails."""
from vlprompt import bench

def test_default_world_has_room_and_shows_coops_trade_off():
    zs = bench.base_to_new('zeroshot')
    coop = bench.base_to_new('coop', epochs=10)
    assert 55 <= zs['base'] <= 80, zs  # room to learn
    assert coop['base'] >= zs['base'] + 6, (coop, zs)  # CoOp learns the base classes
    assert coop['new'] <= zs['new'] - 4, (coop, zs)  # ... and forgets the new ones
