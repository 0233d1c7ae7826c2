"""EpochSampler: seeded order per epoch, disjoint DDP shards, exact evaluation shards."""

import itertools

import pytest

from cnnpipe.data.sampling import EpochSampler


def indices(sampler):
    return [index for _, index in sampler]


@pytest.mark.parametrize(("n", "world"), itertools.product([1, 7, 10, 33], [1, 2, 3, 4]))
def test_training_shards_are_disjoint_equal_and_drop_less_than_a_round(n, world):
    shards = [indices(EpochSampler(n, seed=3, rank=rank, world_size=world)) for rank in range(world)]
    flat = [i for shard in shards for i in shard]
    assert len(flat) == len(set(flat))
    assert {len(shard) for shard in shards} == {n // world}
    assert n - len(flat) < world
    assert all(len(EpochSampler(n, 3, rank=r, world_size=world)) == n // world for r in range(world))


@pytest.mark.parametrize(("n", "world"), itertools.product([1, 7, 10, 33], [1, 2, 3, 4]))
def test_evaluation_shards_cover_every_sample_exactly_once(n, world):
    samplers = [EpochSampler(n, 0, shuffle=False, rank=r, world_size=world, drop_uneven=False) for r in range(world)]
    flat = sorted(i for sampler in samplers for i in indices(sampler))
    assert flat == list(range(n))
    assert sum(len(sampler) for sampler in samplers) == n


def test_order_is_seeded_and_new_every_epoch_and_keys_carry_the_epoch():
    sampler = EpochSampler(50, seed=1)
    first = indices(sampler)
    assert first == indices(EpochSampler(50, seed=1)) != indices(EpochSampler(50, seed=2))
    sampler.set_epoch(1)
    assert indices(sampler) != first and sorted(indices(sampler)) == sorted(first)
    assert {epoch for epoch, _ in sampler} == {1}


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="rank 2"):
        EpochSampler(10, 0, rank=2, world_size=2)
