import pytest

from pipeedge.partition import (
    LayerRange,
    PartitionError,
    even_partition,
    format_partition,
    parse_partition,
)


def test_seed_examples_parse():
    assert parse_partition("1,24,25,48", 48) == [LayerRange(1, 24), LayerRange(25, 48)]
    assert parse_partition("1,47,48,48", 48)[-1] == LayerRange(48, 48)
    four = parse_partition("1,4,5,8,9,20,21,48", 48)
    assert [r.count for r in four] == [4, 4, 12, 28]
    assert format_partition(four) == "1,4,5,8,9,20,21,48"


@pytest.mark.parametrize("text,needle", [
    ("1,24,26,48", "gap at stage 2"),
    ("1,24,24,48", "overlap at stage 2"),
    ("1,24,25,47", "ends at layer 47"),
    ("1,24,25,49", "ends at layer 49"),
    ("2,48", "starts at layer 2"),
    ("1,24,25", "pairs"),
    ("1,a", "comma-separated integers"),
    ("24,1", "reversed"),
])
def test_bad_partitions_name_the_problem(text, needle):
    with pytest.raises(PartitionError, match=needle):
        parse_partition(text, 48)


def test_even_partition_covers_all_layers():
    for layers in (24, 48, 96):
        for stages in (1, 2, 3, 5, 7):
            ranges = even_partition(layers, stages)
            assert parse_partition(format_partition(ranges), layers) == ranges
            assert max(r.count for r in ranges) - min(r.count for r in ranges) <= 1
