"""The Triton coordinate hash table: inserts, lookups, collisions, capacity, limits (interpreter on CPU)."""
from __future__ import annotations

import pytest
import torch

from warpsparse.coords import triton_hash
from warpsparse.coords.coord_set import CoordSet
from warpsparse.coords.keys import MAX_KEY_SPACE, key_radix, pack
from warpsparse.coords.triton_hash import (CACHE_KEY, EMPTY, HASH_MULTIPLIER, MAX_LOAD, MIN_CAPACITY, PACKED_KEYS,
                                           HashTable, coord_table, require_runnable, table_capacity)

from oracle import fresh_seed, random_coords  # noqa: F401

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels run compiled on a GPU, else interpreted


@pytest.fixture(autouse=True)
def many_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Narrow interpreter programs, so that work spreads over many programs as on a GPU."""
    monkeypatch.setattr(triton_hash, "INTERPRETER_LANES", 256)


def home(key: int, capacity: int) -> int:
    """The home slot, computed independently of the kernels: top bits of key * multiplier mod 2**64."""
    return ((key * HASH_MULTIPLIER) % 2**64) >> (64 - (capacity.bit_length() - 1))


def colliding_keys(count: int, slot: int, capacity: int, packed: bool = False) -> list[int]:
    """``count`` distinct non-negative keys whose home slot is ``slot``: invert the multiplier mod 2**64 (for a
    packed table, keys below 2**31: search them, hashing in wrapping int64 arithmetic)."""
    if packed:
        found: list[int] = []
        signed = HASH_MULTIPLIER - 2**64
        start = int(torch.randint(0, PACKED_KEYS // 2, ()))
        while len(found) < count:
            k = torch.arange(start, start + (1 << 22), dtype=torch.int64)
            slots = ((k * signed) >> (64 - (capacity.bit_length() - 1))) & (capacity - 1)
            found += k[slots == slot].tolist()[:count - len(found)]
            start += 1 << 22
        return found
    inverse = pow(HASH_MULTIPLIER, -1, 2**64)
    shift = 64 - (capacity.bit_length() - 1)
    keys: dict[int, None] = {}
    while len(keys) < count:
        low = torch.randint(0, 1 << shift, (4 * count,)).tolist()
        for r in low:
            key = (((slot << shift) + r) * inverse) % 2**64
            if key < MAX_KEY_SPACE and len(keys) < count:
                keys[key] = None
    return list(keys)


def stored(table: HashTable) -> dict[int, int]:
    """Key -> value of every occupied slot."""
    if table.packed:
        return {w >> 32: w & 0xFFFFFFFF for w in table.slots.cpu().tolist() if w != EMPTY}
    rows = table.slots.cpu().tolist()
    return {k: v for k, v in rows if k != EMPTY}


def slot_keys(table: HashTable) -> torch.Tensor:
    """The key in every slot (EMPTY where free)."""
    return table.slots >> 32 if table.packed else table.slots[:, 0]


def test_capacity_is_a_power_of_two_at_load_at_most_half() -> None:
    for n in [0, 1, 7, 8, 9, 1000, 1 << 20, (1 << 20) + 1]:
        for load in (0.5, 0.25):
            cap = table_capacity(n, load)
            assert cap >= MIN_CAPACITY and cap & (cap - 1) == 0
            assert n <= cap * load and (cap == MIN_CAPACITY or n > cap * load / 2)
    with pytest.raises(ValueError, match="max_load"):
        table_capacity(10, 0.75)
    with pytest.raises(ValueError, match="num_keys"):
        table_capacity(-1)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("n", [3000] + ([1 << 22] if DEV == "cuda" else []))
def test_insert_and_lookup_random_keys_with_duplicates(n: int, packed: bool) -> None:
    device = DEV
    bound = PACKED_KEYS if packed else MAX_KEY_SPACE
    distinct = torch.randint(0, bound, (n // 3,), dtype=torch.int64)
    distinct[0] = bound - 1  # the largest key
    keys = distinct[torch.randint(0, distinct.numel(), (n,))].to(device)
    keys[0] = bound - 1
    table = HashTable.allocate(n, device, packed=packed)
    assert table.packed == packed
    table.insert(keys)
    uniq = torch.unique(keys)
    assert int((slot_keys(table) != EMPTY).sum()) == uniq.numel()
    rows = table.lookup(keys)
    assert bool((rows >= 0).all()) and torch.equal(keys[rows], keys)  # each key maps to a row holding it
    absent = torch.randint(0, bound, (n,), dtype=torch.int64, device=device)
    absent = absent[~torch.isin(absent, uniq)]
    assert bool((table.lookup(absent) == -1).all())
    assert table.lookup(keys[:0]).numel() == 0


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("capacity", [256] + ([1 << 14] if DEV == "cuda" else []))
def test_adversarial_keys_sharing_one_home_slot(capacity: int, packed: bool) -> None:
    device = DEV
    slot = capacity - 3  # the probe run wraps past the end of the table
    keys = colliding_keys(capacity // 2, slot, capacity, packed)
    assert {home(k, capacity) for k in keys} == {slot}
    present, absent = keys[: capacity // 4], keys[capacity // 4:]
    table = HashTable.allocate(capacity // 2, device, packed=packed)
    assert table.capacity == capacity
    table.insert(torch.tensor(present, dtype=torch.int64, device=device))
    # linear probing: the colliding keys fill one run of consecutive slots starting at their home slot
    run = [(slot + i) % capacity for i in range(len(present))]
    assert sorted(slot_keys(table)[run].cpu().tolist()) == sorted(present)
    assert stored(table) == {k: i for i, k in enumerate(present)}
    found = table.lookup(torch.tensor(present + absent, dtype=torch.int64, device=device)).cpu().tolist()
    assert found == list(range(len(present))) + [-1] * len(absent)


@pytest.mark.parametrize("packed", [False, True])
def test_full_table_keeps_answering_and_refuses_more(packed: bool) -> None:
    capacity = 64
    table = HashTable.allocate(capacity // 2, DEV, packed=packed)
    assert table.capacity == capacity
    first = colliding_keys(capacity // 4, 5, capacity, packed)
    second = colliding_keys(capacity // 4, 40, capacity, packed)
    keys = torch.tensor(first + second, dtype=torch.int64, device=DEV)
    table.insert(keys[:20])
    table.insert(keys[20:])  # load exactly MAX_LOAD
    assert table.reserved == capacity * MAX_LOAD
    everything = first + second
    assert stored(table) == {k: i if i < 20 else i - 20 for i, k in enumerate(everything)}  # positions per call
    absent = torch.tensor(colliding_keys(capacity // 4, 5, capacity, packed), dtype=torch.int64, device=DEV)
    absent = absent[~torch.isin(absent, keys)]
    assert bool((table.lookup(absent) == -1).all())
    before = table.slots.clone()
    with pytest.raises(ValueError, match="no room for 1 more"):
        table.insert(absent[:1])
    assert torch.equal(table.slots, before)  # a refused insert leaves the table untouched


@pytest.mark.parametrize("packed", [False, True])
def test_a_table_over_given_slots_counts_their_keys_and_refuses_an_overfull_one(packed: bool) -> None:
    """Slots handed in (not allocated) may already hold keys: they count against the load, and slots past
    :data:`MAX_LOAD` are refused (a probe for an absent key there might never meet a free slot)."""
    table = HashTable.allocate(8, DEV, packed=packed)
    table.insert(torch.tensor([3, 11, 4], dtype=torch.int64, device=DEV))
    again = HashTable(table.slots.clone())
    assert again.reserved == 3
    assert again.lookup(torch.tensor([11, 5], dtype=torch.int64, device=DEV)).tolist() == [1, -1]
    with pytest.raises(ValueError, match="no room for 6 more"):
        again.insert(torch.arange(20, 26, dtype=torch.int64, device=DEV))
    with pytest.raises(ValueError, match="reserved must be a key count in 0..8"):
        HashTable(table.slots.clone(), reserved=9)
    full = torch.zeros((MIN_CAPACITY,) if packed else (MIN_CAPACITY, 2), dtype=torch.int64, device=DEV)
    with pytest.raises(ValueError, match=f"slots hold {MIN_CAPACITY} keys in {MIN_CAPACITY} slots, past the load"):
        HashTable(full)


@pytest.mark.parametrize("packed", [False, True])
def test_a_repeated_key_keeps_its_first_value(packed: bool) -> None:
    table = HashTable.allocate(16, DEV, packed=packed)
    table.insert(torch.tensor([7, 9], dtype=torch.int64, device=DEV))
    table.insert(torch.tensor([9, 11], dtype=torch.int64, device=DEV))
    assert table.lookup(torch.tensor([7, 9, 11, 8], dtype=torch.int64, device=DEV)).tolist() == [0, 1, 1, -1]
    assert table.lookup(torch.tensor([-1, -2], dtype=torch.int64, device=DEV)).tolist() == [-1, -1]  # never stored


def test_clear_errors() -> None:
    table = HashTable.allocate(8, DEV)
    with pytest.raises(TypeError, match="int64"):
        table.insert(torch.tensor([1, 2], dtype=torch.int32, device=DEV))
    with pytest.raises(TypeError, match="int64"):
        table.lookup([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative"):
        table.insert(torch.tensor([3, -5], dtype=torch.int64, device=DEV))
    with pytest.raises(ValueError, match="are on"):
        table.lookup(torch.tensor([3], dtype=torch.int64, device="meta"))
    with pytest.raises(ValueError, match="power-of-two"):
        HashTable(torch.full((48, 2), EMPTY, dtype=torch.int64, device=DEV))
    with pytest.raises(ValueError, match="power-of-two"):
        HashTable(torch.full((48,), EMPTY, dtype=torch.int64, device=DEV))
    packed = HashTable.allocate(8, DEV, packed=True)
    with pytest.raises(ValueError, match=r"below 2\*\*31 \(got 2147483648\)"):
        packed.insert(torch.tensor([5, PACKED_KEYS], dtype=torch.int64, device=DEV))
    assert packed.reserved == 0 and bool((packed.slots == EMPTY).all())  # nothing inserted
    with pytest.raises(ValueError, match="power-of-two"):
        HashTable(torch.full((8, 2), EMPTY, dtype=torch.int64, device=DEV))
    with pytest.raises(ValueError, match="int64"):
        HashTable(torch.full((16, 3), EMPTY, dtype=torch.int64, device=DEV))
    with pytest.raises(ValueError, match="device meta"):
        require_runnable(torch.device("meta"))


def test_coord_table_maps_sites_to_rows_and_is_cached() -> None:
    device = DEV
    shape = (6, 1, 9)
    coords = random_coords(150, shape, batch=3, device=device)
    corners = torch.tensor([[b, x0, 0, x2] for b in (0, 2) for x0 in (0, 5) for x2 in (0, 8)], dtype=torch.int32)
    keep = ~torch.isin(pack(coords.cpu(), key_radix(shape, 3)), pack(corners, key_radix(shape, 3)))
    coords = torch.cat([corners.to(device), coords[keep.to(device)]])
    cs = CoordSet(coords, shape, 3)
    table = coord_table(cs)
    assert cs.cache[CACHE_KEY] is table and coord_table(cs) is table
    assert table.capacity >= 4 * coords.shape[0] and table.packed
    rows = table.lookup(pack(coords, key_radix(shape, 3)))
    assert torch.equal(rows.cpu(), torch.arange(coords.shape[0]))


def test_coord_table_counts_repeated_sites() -> None:
    """Built with a counter, the table adds every row whose site another row placed: duplicates, whichever
    lane wins each race."""
    shape = (5, 7, 4)
    coords = random_coords(90, shape, batch=2, device=DEV)
    picks = torch.randint(0, coords.shape[0], (37,), device=DEV)
    twice = torch.cat([coords, coords[picks]])[torch.randperm(coords.shape[0] + 37, device=DEV)]
    count = torch.zeros(1, dtype=torch.int32, device=DEV)
    cs = CoordSet(twice, shape, 2)
    coord_table(cs, repeats=count)
    assert int(count) == 37
    rows = coord_table(cs).lookup(pack(coords, key_radix(shape, 2)))
    assert torch.equal(pack(twice[rows], key_radix(shape, 2)), pack(coords, key_radix(shape, 2)))
    unique = torch.zeros(1, dtype=torch.int32, device=DEV)
    coord_table(CoordSet(coords, shape, 2), repeats=unique)
    assert int(unique) == 0


@pytest.mark.parametrize("shape,batch", [((1 << 10, 1 << 10, 1 << 11), 1), ((1 << 10, 1 << 10, 1 << 10), 2)])
def test_key_spaces_up_to_two_to_the_31_get_packed_tables(shape: tuple[int, int, int], batch: int) -> None:
    """2**31 sites: the largest key is 2**31 - 1 and still packs; one more site does not."""
    hi = torch.tensor([batch - 1, *(s - 1 for s in shape)])
    coords = torch.stack([torch.zeros(4, dtype=torch.int64), hi, hi // 3])
    cs = CoordSet(coords.to(DEV, torch.int32), shape, batch)
    assert int(pack(hi, key_radix(shape, batch))) == PACKED_KEYS - 1 and coord_table(cs).packed
    assert coord_table(cs).lookup(pack(coords, key_radix(shape, batch)).to(DEV)).tolist() == [0, 1, 2]
    bigger = CoordSet(coords.to(DEV, torch.int32), (shape[0] + 1, *shape[1:]), batch)
    assert not coord_table(bigger).packed


@pytest.mark.parametrize("shape,batch", [((1 << 20, 1 << 20, 1 << 20), 4), ((1 << 17, 1 << 17, 1 << 17), 1024)])
def test_largest_key_spaces_work(shape: tuple[int, int, int], batch: int) -> None:
    hi = torch.tensor([batch - 1, *(s - 1 for s in shape)])
    edge = torch.tensor([batch - 1, 0, shape[1] - 1, 0])
    coords = torch.stack([torch.zeros(4, dtype=torch.int64), hi, hi // 3, edge])
    cs = CoordSet(coords.to(DEV, torch.int32), shape, batch)
    rows = coord_table(cs).lookup(pack(coords, key_radix(shape, batch)).to(DEV))
    assert rows.tolist() == [0, 1, 2, 3] and not coord_table(cs).packed
    other = coords.clone()
    other[:, 3] = torch.where(other[:, 3] > 0, other[:, 3] - 1, other[:, 3] + 1)
    assert coord_table(cs).lookup(pack(other, key_radix(shape, batch)).to(DEV)).tolist() == [-1] * 4


def test_key_space_past_two_to_the_62_is_a_clear_error() -> None:
    cs = CoordSet(torch.zeros((1, 4), dtype=torch.int32, device=DEV), (1 << 20, 1 << 20, 1 << 20), 1024)
    with pytest.raises(ValueError, match=r"2\*\*62"):
        coord_table(cs)
