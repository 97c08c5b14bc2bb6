"""A GPU hash table of int64 keys in Triton: open addressing, linear probing, atomic compare-and-swap inserts.

Slots are ``[capacity, 2]`` int64 rows ``(key, value)``; a free slot holds the key :data:`EMPTY` (in a packed
table, below, the whole word is :data:`EMPTY`). Keys are
non-negative (coordinates packed by :func:`warpsparse.coords.keys.pack`, batch-major mixed radix over the real
grid, so the only limit is batch x grid <= 2**62). A *packed* table, for keys below ``2**31`` and values below
``2**32`` (every coordinate set of batch x grid <= 2**31 sites), holds each entry in one int64 word ``key << 32 |
value``: half the bytes, one compare-and-swap per insert and one load per probe. A key's home slot is the top
``log2(capacity)`` bits of ``key * 0x9E3779B97F4A7C15`` (Fibonacci hashing); capacity is a power of two and the
load never exceeds :data:`MAX_LOAD`, so every probe sequence meets a free slot.

The jitted helpers (:func:`pack_key`, :func:`insert_keys`, :func:`find_keys`) are shared with the kernel-map
kernels of :mod:`warpsparse.coords.triton_maps`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from warpsparse.coords.coord_set import CoordSet
from warpsparse.coords.keys import key_radix
from warpsparse.triton_launch import cdiv, fast_launch

EMPTY = -1
MAX_LOAD = 0.5
# coordinate tables are queried K times per site, so they run emptier than MAX_LOAD: 32-64 B a site packed (64-128
# B unpacked); at 0.125 the subm build was 5-10% faster on an H100 (bench/maps.py --sweep) but a network's
# forward peak held 8 MiB more
COORD_LOAD = 0.25
PACKED_KEYS = 2**31  # keys of a packed table stay below this
MIN_CAPACITY = 16
HASH_MULTIPLIER = 0x9E3779B97F4A7C15
CACHE_KEY = "hash"

_MUL = tl.constexpr(HASH_MULTIPLIER)
_EMPTY = tl.constexpr(EMPTY)
_NEVER = tl.constexpr(-2)  # a compare value no slot ever holds: turns a lane's CAS into a no-op
INTERPRETER_LANES = 1 << 14  # the interpreter pays per program, not per lane: few, wide programs there


@triton.jit
def pack_key(b, x0, x1, x2, s0, s1, s2):
    """Batch-major mixed-radix int64 key of in-range coordinates (the same as ``keys.pack``)."""
    return ((b.to(tl.int64) * s0 + x0) * s1 + x1) * s2 + x2


@triton.jit
def home_slot(key, shift):
    """Fibonacci hashing: the top ``64 - shift`` bits of ``key * HASH_MULTIPLIER``."""
    h = key.to(tl.uint64, bitcast=True) * _MUL
    return (h >> shift.to(tl.uint64)).to(tl.int64)


@triton.jit
def insert_keys(slots_ptr, key, todo, shift, hmask):
    """Insert ``key`` where ``todo``; returns each lane's slot and whether this lane placed the key."""
    slot = home_slot(key, shift)
    placed = tl.zeros_like(todo)
    while tl.max(todo.to(tl.int32)) > 0:
        prev = tl.atomic_cas(slots_ptr + 2 * slot, tl.where(todo, _EMPTY, _NEVER).to(tl.int64),
                             tl.where(todo, key, _NEVER).to(tl.int64), sem="relaxed")
        placed = placed | (todo & (prev == _EMPTY))
        todo = todo & (prev != _EMPTY) & (prev != key)
        slot = tl.where(todo, (slot + 1) & hmask, slot)
    return slot, placed


@triton.jit
def insert_packed(slots_ptr, key, value, todo, shift, hmask):
    """Insert ``key`` with ``value`` into a packed table where ``todo``; whether this lane placed the key."""
    slot = home_slot(key, shift)
    word = (key << 32) | value.to(tl.int64)
    placed = tl.zeros_like(todo)
    while tl.max(todo.to(tl.int32)) > 0:
        prev = tl.atomic_cas(slots_ptr + slot, tl.where(todo, _EMPTY, _NEVER).to(tl.int64),
                             tl.where(todo, word, _NEVER).to(tl.int64), sem="relaxed")
        placed = placed | (todo & (prev == _EMPTY))
        todo = todo & (prev != _EMPTY) & ((prev >> 32) != key)
        slot = tl.where(todo, (slot + 1) & hmask, slot)
    return placed


@triton.jit
def find_keys(slots_ptr, key, todo, shift, hmask, PACKED: tl.constexpr):
    """The value stored under ``key`` where ``todo`` (int64, ``-1`` when absent or not asked)."""
    slot = home_slot(key, shift)
    value = tl.zeros_like(key) - 1
    while tl.max(todo.to(tl.int32)) > 0:
        if PACKED:
            word = tl.load(slots_ptr + slot, mask=todo, other=_EMPTY)
            free = word == _EMPTY
            stored = word >> 32
            stored_value = word - (stored << 32)
        else:
            stored = tl.load(slots_ptr + 2 * slot, mask=todo, other=_EMPTY)
            stored_value = tl.load(slots_ptr + 2 * slot + 1, mask=todo, other=-1)  # with the key: one round trip
            free = stored == _EMPTY
        hit = todo & ~free & (stored == key)
        value = tl.where(hit, stored_value, value)
        todo = todo & ~hit & ~free
        slot = (slot + 1) & hmask
    return value


@fast_launch
@triton.jit(do_not_specialize=["n", "shift", "hmask", "s0", "s1", "s2"])
def _insert_kernel(slots_ptr, src_ptr, repeats_ptr, n, shift, hmask, s0, s1, s2, FROM_COORDS: tl.constexpr,
                   COUNT: tl.constexpr, PACKED: tl.constexpr, BLOCK: tl.constexpr):
    """Insert row ``r`` of ``src`` (keys, or [N, 4] coordinates packed with radix ``s``) with value ``r``;
    with ``COUNT``, add the rows whose key another row placed to ``repeats``."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = rows < n
    if FROM_COORDS:
        row64 = rows.to(tl.int64)  # 4 * rows passes 2**31 past 2**29 sites
        b = tl.load(src_ptr + 4 * row64, mask=live, other=0)
        x0 = tl.load(src_ptr + 4 * row64 + 1, mask=live, other=0)
        x1 = tl.load(src_ptr + 4 * row64 + 2, mask=live, other=0)
        x2 = tl.load(src_ptr + 4 * row64 + 3, mask=live, other=0)
        key = pack_key(b, x0, x1, x2, s0, s1, s2)
    else:
        key = tl.load(src_ptr + rows, mask=live, other=0)
    if PACKED:
        placed = insert_packed(slots_ptr, key, rows, live, shift, hmask)
    else:
        slot, placed = insert_keys(slots_ptr, key, live, shift, hmask)
        tl.store(slots_ptr + 2 * slot + 1, rows.to(tl.int64), mask=placed)
    if COUNT:
        tl.atomic_add(repeats_ptr, tl.sum((live & ~placed).to(tl.int32), axis=0))


@fast_launch
@triton.jit(do_not_specialize=["n", "shift", "hmask"])
def _lookup_kernel(slots_ptr, keys_ptr, out_ptr, n, shift, hmask, PACKED: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = rows < n
    key = tl.load(keys_ptr + rows, mask=live, other=0)
    tl.store(out_ptr + rows, find_keys(slots_ptr, key, live, shift, hmask, PACKED), mask=live)


def table_capacity(num_keys: int, max_load: float = MAX_LOAD) -> int:
    """The power-of-two capacity (at least :data:`MIN_CAPACITY`) that holds ``num_keys`` at load <= ``max_load``."""
    if not 0 < max_load <= MAX_LOAD:
        raise ValueError(f"max_load must be in (0, {MAX_LOAD}], got {max_load}")
    if num_keys < 0:
        raise ValueError(f"num_keys must be >= 0, got {num_keys}")
    cap = MIN_CAPACITY
    while cap * max_load < num_keys:
        cap *= 2
    return cap


@dataclass(frozen=True)
class Launch:
    """How a kernel is launched on CUDA: lanes (work items) per program and warps per program.

    Probing is latency-bound and a program waits for its slowest lane, so many narrow programs win there.
    """

    lanes: int
    warps: int

    def lanes_on(self, device: torch.device) -> int:
        """Lanes per program on ``device`` (:data:`INTERPRETER_LANES` at least under the interpreter)."""
        return self.lanes if device.type == "cuda" else max(self.lanes, INTERPRETER_LANES)


INSERT = Launch(128, 4)  # table inserts and lookups (`python bench/maps.py --sweep` on an H100)


def require_runnable(device: torch.device) -> None:
    """``ValueError`` unless Triton kernels can run on ``device`` (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    if device.type == "cuda":
        return
    if device.type == "cpu" and type(_insert_kernel).__name__ == "InterpretedFunction":
        return
    raise ValueError(f"the Triton hash table and map builder run on CUDA tensors (or on CPU tensors when "
                     f"TRITON_INTERPRET=1 is set before warpsparse is imported), got device {device}")


COUNT_KEYS = -1  # a HashTable's ``reserved`` that asks it to count the keys its slots hold


@dataclass(eq=False)
class HashTable:
    """An open-addressing table of non-negative int64 keys to int64 values on one device.

    ``slots`` is ``[capacity, 2]`` int64 (key, value), or ``[capacity]`` int64 words ``key << 32 | value`` in a
    packed table (:attr:`packed`: keys below :data:`PACKED_KEYS`); ``reserved`` is the host-side upper bound on
    keys that may have been inserted, which keeps the load <= :data:`MAX_LOAD` without reading the device.
    Left at :data:`COUNT_KEYS`, it is the count of occupied slots (one host read), which must be within that
    load: probes of a fuller table might never meet a free slot.
    """

    slots: torch.Tensor
    reserved: int = COUNT_KEYS

    def __post_init__(self) -> None:
        require_runnable(self.slots.device)
        cap = self.slots.shape[0] if self.slots.dim() in (1, 2) else 0
        if (self.slots.dtype != torch.int64 or self.slots.dim() not in (1, 2) or self.slots.shape[1:] not in
                ((), (2,)) or cap < MIN_CAPACITY or cap & (cap - 1)):
            raise ValueError(f"slots must be an int64 [capacity, 2] (or packed: [capacity]) tensor with a "
                             f"power-of-two capacity >= {MIN_CAPACITY}, got {self.slots.dtype} "
                             f"{tuple(self.slots.shape)}")
        if self.reserved == COUNT_KEYS:
            keys = self.slots if self.packed else self.slots[:, 0]
            self.reserved = int((keys != EMPTY).sum())
            if self.reserved > cap * MAX_LOAD:
                raise ValueError(f"slots hold {self.reserved} keys in {cap} slots, past the load {MAX_LOAD} a table "
                                 "allows (a probe for an absent key might never end); rebuild the keys into a table "
                                 f"of capacity >= {table_capacity(self.reserved, MAX_LOAD)}")
        elif not 0 <= self.reserved <= cap * MAX_LOAD:
            raise ValueError(f"reserved must be a key count in 0..{int(cap * MAX_LOAD)} (capacity {cap} at load "
                             f"{MAX_LOAD}) or COUNT_KEYS, got {self.reserved}")

    @classmethod
    def allocate(cls, max_keys: int, device: torch.device | str, max_load: float = MAX_LOAD,
                 packed: bool = False) -> "HashTable":
        """An empty table sized for ``max_keys`` keys at load <= ``max_load`` (``packed``: keys below
        :data:`PACKED_KEYS`, in one word per slot)."""
        cap = table_capacity(max_keys, max_load)
        return cls(torch.full((cap,) if packed else (cap, 2), EMPTY, dtype=torch.int64, device=device), 0)

    @property
    def capacity(self) -> int:
        return self.slots.shape[0]

    @property
    def packed(self) -> bool:
        """Whether each slot is one word ``key << 32 | value`` (the jitted helpers' ``PACKED``)."""
        return self.slots.dim() == 1

    @property
    def probe_args(self) -> tuple[int, int]:
        """``(shift, capacity - 1)``: what the jitted helpers take to find home slots and wrap probes."""
        return 64 - (self.capacity.bit_length() - 1), self.capacity - 1

    def reserve(self, num_keys: int) -> None:
        """Account for up to ``num_keys`` more keys; ``ValueError`` when the load could pass :data:`MAX_LOAD`."""
        if self.reserved + num_keys > self.capacity * MAX_LOAD:
            raise ValueError(f"a hash table of capacity {self.capacity} holding up to {self.reserved} keys has no "
                             f"room for {num_keys} more at load <= {MAX_LOAD}; allocate a larger table")
        self.reserved += num_keys

    def insert(self, keys: torch.Tensor) -> None:
        """Insert ``keys`` (int64, >= 0) with their positions as values; a key already present keeps its value."""
        _check_keys(keys, self.slots.device)
        if keys.numel() and bool((keys < 0).any()):
            raise ValueError("keys must be non-negative (negative values are reserved for free slots)")
        if self.packed and keys.numel() and bool((keys >= PACKED_KEYS).any()):
            raise ValueError(f"keys of a packed table must be below 2**31 (got {int(keys.max())}); allocate an "
                             "unpacked table")
        self.reserve(keys.numel())
        if keys.numel():
            block = INSERT.lanes_on(keys.device)
            _insert_kernel[(cdiv(keys.numel(), block),)](self.slots, keys.contiguous(), self.slots, keys.numel(),
                                                         *self.probe_args, 1, 1, 1, FROM_COORDS=False, COUNT=False,
                                                         PACKED=self.packed, BLOCK=block, num_warps=INSERT.warps)

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """Values stored under ``keys`` (int64, same shape), ``-1`` where a key is absent."""
        _check_keys(keys, self.slots.device)
        out = torch.empty(keys.shape, dtype=torch.int64, device=keys.device)
        if keys.numel():
            block = INSERT.lanes_on(keys.device)
            _lookup_kernel[(cdiv(keys.numel(), block),)](self.slots, keys.contiguous(), out, keys.numel(),
                                                         *self.probe_args, PACKED=self.packed, BLOCK=block,
                                                         num_warps=INSERT.warps)
        return out


def _check_keys(keys: torch.Tensor, device: torch.device) -> None:
    if not isinstance(keys, torch.Tensor) or keys.dtype != torch.int64:
        raise TypeError(f"keys must be an int64 tensor, got {getattr(keys, 'dtype', type(keys).__name__)}")
    if keys.device != device:
        raise ValueError(f"keys are on {keys.device} but the table on {device}")


def coord_table(coord_set: CoordSet, repeats: torch.Tensor | None = None) -> HashTable:
    """The table of ``coord_set``'s sites (key -> row), built on first use and kept in ``coord_set.cache``.

    Keys are packed with the set's own radix (``spatial_shape``, ``batch_size``); the table is packed when every
    key of that radix is below :data:`PACKED_KEYS`. No device sync. When the table is built here and
    ``repeats`` (an int32 device counter) is given, the rows whose site another row placed are added to it.
    """
    table = coord_set.cache.get(CACHE_KEY)
    if table is None:
        s0, s1, s2 = key_radix(coord_set.spatial_shape, coord_set.batch_size)
        n = coord_set.num_points
        table = HashTable.allocate(n, coord_set.device, COORD_LOAD,
                                   packed=coord_set.batch_size * s0 * s1 * s2 <= PACKED_KEYS)
        table.reserve(n)
        if n:
            block = INSERT.lanes_on(coord_set.device)
            _insert_kernel[(cdiv(n, block),)](table.slots, coord_set.coords.contiguous(),
                                              table.slots if repeats is None else repeats, n, *table.probe_args,
                                              s0, s1, s2, FROM_COORDS=True, COUNT=repeats is not None,
                                              PACKED=table.packed, BLOCK=block, num_warps=INSERT.warps)
        coord_set.cache[CACHE_KEY] = table
    return table
