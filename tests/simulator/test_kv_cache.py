import pytest

from simulator.kv_cache import BlockPool


def test_allocate_release_and_peak():
    p = BlockPool(10, 16)
    assert p.blocks_for(0) == 0 and p.blocks_for(1) == 1 and p.blocks_for(16) == 1 and p.blocks_for(17) == 2
    p.allocate(4)
    p.allocate(3)
    assert p.used == 7 and p.free == 3 and p.peak_used == 7
    p.release(5)
    assert p.used == 2 and p.peak_used == 7
    assert p.can_allocate(8) and not p.can_allocate(9) and not p.can_allocate(8, reserve=1)


def test_overdraw_and_over_release_raise():
    p = BlockPool(2, 4)
    with pytest.raises(RuntimeError, match="overdrawn"):
        p.allocate(3)
    with pytest.raises(RuntimeError, match="more blocks"):
        p.release(1)
