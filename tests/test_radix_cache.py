"""Prefix cache (RadixCache): a page-aligned radix tree over token ids that holds one allocator
reference per cached block. Unit tests of matching, splitting, LRU eviction and locks, and a
property test that runs random operation sequences against a naive page-level model."""
import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specdec_native import _core

BlockAllocator = _core.BlockAllocator
RadixCache = _core.RadixCache


def ceil_div(a, b):
    return -(-a // b)


def cached(a, cache, tokens, blocks):
    """Inserts like a finished sequence: the tree takes its references, the caller drops its own."""
    node = cache.insert(tokens, blocks)
    for b in blocks:
        a.decref(b)
    return node


# ---------------------------------------------------------------------------------------------
# unit tests


def test_partial_edge_match_returns_whole_pages_only():
    a = BlockAllocator(16)
    c = RadixCache(4, a)
    blocks = a.allocate(3)
    toks = list(range(100, 112))  # 3 pages
    cached(a, c, toks, blocks)
    assert c.num_nodes == 1 and c.num_cached_blocks == 3

    assert c.match_prefix(toks + [7, 7])[:2] == (blocks, 12)
    assert c.match_prefix(toks[:10])[:2] == (blocks[:2], 8)  # the partial third page is dropped
    assert c.match_prefix(toks[:3])[:2] == ([], 0)  # less than a page
    assert c.match_prefix([1, 2, 3, 4])[:2] == ([], 0)
    got, n, node = c.match_prefix(toks[:8] + [0, 0, 0, 0])  # diverges in the third page
    assert (got, n) == (blocks[:2], 8)
    # the edge was split at the match, so the returned node covers exactly the matched pages
    assert c.num_nodes == 2 and c.num_cached_blocks == 3
    c.lock(node)
    assert c.num_evictable_blocks == 1
    assert c.evict(100) == 1
    assert a.refcount(blocks[2]) == 0 and a.refcount(blocks[0]) == 1
    assert c.match_prefix(toks)[:2] == (blocks[:2], 8)
    c.unlock(node)
    assert c.evict(100) == 2 and a.num_free == 15 and c.num_nodes == 0


def test_empty_and_short_inputs():
    a = BlockAllocator(8)
    c = RadixCache(2, a)
    assert c.match_prefix([]) == ([], 0, 0)
    assert c.insert([], []) == 0
    assert c.insert([5], []) == 0  # no whole page: nothing cached, root returned
    assert c.num_nodes == 0 and c.num_cached_blocks == 0
    # extra blocks and a partial last page are ignored
    blocks = a.allocate(3)
    node = c.insert([1, 2, 3, 4, 5], blocks)
    assert node != 0 and c.num_cached_blocks == 2
    assert [a.refcount(b) for b in blocks] == [2, 2, 1]


def test_insert_extending_an_edge_and_branching_mid_edge():
    a = BlockAllocator(32)
    c = RadixCache(2, a)
    A, B, C = [1, 1, 2, 2], [3, 3, 4, 4], [9, 9]
    ba = a.allocate(2)
    n_a = cached(a, c, A, ba)
    bab = ba + a.allocate(2)
    for b in ba:  # the sequence A+B shares A's cached blocks
        a.incref(b)
    n_ab = cached(a, c, A + B, bab)
    assert n_ab != n_a and c.num_nodes == 2 and c.num_cached_blocks == 4
    assert c.match_prefix(A + B) == (bab, 8, n_ab)
    assert c.match_prefix(A) == (ba, 4, n_a)  # the old node still ends after A
    # branch in the middle of A's edge: A's edge splits after its first page
    bc = [ba[0]] + a.allocate(1)
    a.incref(ba[0])
    n_c = cached(a, c, A[:2] + C, bc)
    assert c.num_nodes == 4 and c.num_cached_blocks == 5
    got, n, top = c.match_prefix(A[:2])
    assert (got, n) == ([ba[0]], 2) and top not in (0, n_a, n_ab, n_c)
    assert c.match_prefix(A[:2] + C) == (bc, 4, n_c)
    assert c.match_prefix(A) == (ba, 4, n_a)
    assert c.match_prefix(A + B + [5, 5]) == (bab, 8, n_ab)
    assert all(a.refcount(b) == 1 for b in bab + bc)  # only the tree holds them
    c.clear()
    assert c.num_nodes == 0 and a.num_free == 31


def test_insert_of_cached_pages_keeps_the_cached_block():
    a = BlockAllocator(16)
    c = RadixCache(3, a)
    toks = [4, 5, 6, 7, 8, 9]
    mine = a.allocate(2)
    n1 = c.insert(toks, mine)
    theirs = a.allocate(3)
    n2 = c.insert(toks + [1, 2, 3], theirs)
    assert n2 != n1
    # the first two pages kept `mine`; only the new third page took `theirs[2]`
    assert [a.refcount(b) for b in mine] == [2, 2]
    assert [a.refcount(b) for b in theirs] == [1, 1, 2]
    assert c.match_prefix(toks + [1, 2, 3])[0] == mine + [theirs[2]]
    assert c.insert(toks, theirs[:2]) == n1  # nothing new: same node, no references taken
    assert [a.refcount(b) for b in theirs] == [1, 1, 2]
    assert c.num_cached_blocks == 3


def test_lru_evicts_the_least_recently_used_leaf_first():
    a = BlockAllocator(16)
    c = RadixCache(1, a)
    seqs = [[1], [2], [3]]
    blocks = {}
    for s in seqs:
        (b,) = a.allocate(1)
        blocks[s[0]] = b
        cached(a, c, s, [b])
    c.match_prefix([1])  # 1 is now the most recent; 2 is the oldest
    c.match_prefix([3, 3, 3])
    order = []
    for _ in range(3):
        free_before = a.num_free
        assert c.evict(1) == 1
        assert a.num_free == free_before + 1
        order.append(next(t for t, b in blocks.items() if a.refcount(b) == 0 and t not in order))
    assert order == [2, 1, 3]
    assert c.evict(1) == 0 and c.num_nodes == 0


def test_use_refreshes_the_whole_path():
    # lock() does not count as a use, so x keeps its age while it is locked
    a = BlockAllocator(16)
    c = RadixCache(1, a)
    (ba,) = a.allocate(1)
    n_a = cached(a, c, [1], [ba])
    (bx,) = a.allocate(1)
    n_x = cached(a, c, [9], [bx])
    a.incref(ba)
    (bb,) = a.allocate(1)
    cached(a, c, [1, 2], [ba, bb])  # uses [1] again: it is now newer than [9]
    c.lock(n_x)
    assert c.evict(1) == 1 and a.refcount(bb) == 0  # [1, 2] is the only unlocked leaf
    c.unlock(n_x)
    assert c.evict(1) == 1 and a.refcount(bx) == 0  # [9] is older than [1]
    assert c.evict(1) == 1 and a.refcount(ba) == 0
    with pytest.raises(ValueError):
        c.lock(n_a)


def test_lock_protects_the_node_and_its_ancestors():
    a = BlockAllocator(16)
    c = RadixCache(2, a)
    ba = a.allocate(1)
    n_parent = cached(a, c, [1, 1], ba)
    for b in ba:
        a.incref(b)
    bb = ba + a.allocate(1)
    n_child = cached(a, c, [1, 1, 2, 2], bb)
    c.lock(n_child)
    assert c.num_evictable_blocks == 0
    assert c.evict(100) == 0 and c.num_cached_blocks == 2 and c.num_nodes == 2
    c.clear()
    assert c.num_cached_blocks == 2
    c.lock(n_child)  # locks nest
    c.unlock(n_child)
    assert c.evict(100) == 0
    c.unlock(n_child)
    # only the parent locked: the child goes, the parent stays
    c.lock(n_parent)
    assert c.num_evictable_blocks == 1
    assert c.evict(100) == 1 and a.refcount(bb[1]) == 0 and a.refcount(bb[0]) == 1
    assert c.num_nodes == 1
    c.unlock(n_parent)
    assert c.evict(100) == 1 and a.num_free == 15


def test_unlock_without_lock_and_unknown_nodes_raise():
    a = BlockAllocator(8)
    c = RadixCache(1, a)
    n = cached(a, c, [1, 2], a.allocate(2))
    with pytest.raises(RuntimeError, match="not locked"):
        c.unlock(n)
    c.lock(n)
    c.unlock(n)
    with pytest.raises(RuntimeError, match="not locked"):
        c.unlock(n)
    c.lock(0)  # the root may be locked (a match of nothing returns it)
    c.unlock(0)
    with pytest.raises(RuntimeError, match="not locked"):
        c.unlock(0)
    for bad in (-1, 2, 99, 2**31 - 1):
        with pytest.raises(ValueError, match="unknown node"):
            c.lock(bad)
        with pytest.raises(ValueError, match="unknown node"):
            c.unlock(bad)
    assert c.evict(1) == 2
    with pytest.raises(ValueError, match="unknown node"):  # evicted: dead
        c.lock(n)
    assert c.evict(-5) == 0 and c.evict(0) == 0


def test_parent_becomes_evictable_once_its_last_child_is_evicted():
    a = BlockAllocator(16)
    c = RadixCache(1, a)
    (p,) = a.allocate(1)
    cached(a, c, [7], [p])
    for tail in (8, 9):
        a.incref(p)
        cached(a, c, [7, tail], [p] + a.allocate(1))
    c.match_prefix([7])  # the parent is the most recently used node, but it is not a leaf
    assert c.num_nodes == 3
    assert c.evict(1) == 1 and c.num_nodes == 2 and a.refcount(p) == 1
    assert c.evict(1) == 1 and c.num_nodes == 1 and a.refcount(p) == 1
    assert c.evict(1) == 1 and c.num_nodes == 0 and a.refcount(p) == 0
    assert a.num_free == 15


def test_evict_counts_only_blocks_that_became_free():
    a = BlockAllocator(16)
    c = RadixCache(1, a)
    shared = a.allocate(2)
    c.insert([1, 2], shared)  # a running sequence still holds these
    cached(a, c, [3, 4], a.allocate(2))
    c.match_prefix([3])  # [1, 2] is the older leaf
    free_before = a.num_free
    assert c.evict(1) == 1  # drops [1, 2] (frees nothing), then [3, 4]'s leaf page
    assert a.num_free == free_before + 1
    assert all(a.refcount(b) == 1 for b in shared)
    assert c.num_cached_blocks == 1


def test_clear_keeps_locked_paths():
    a = BlockAllocator(32)
    c = RadixCache(2, a)
    ab = a.allocate(2)
    n_ab = cached(a, c, [1, 1, 2, 2], ab)
    a.incref(ab[0])
    cached(a, c, [1, 1, 3, 3], [ab[0]] + a.allocate(1))
    cached(a, c, [4, 4, 5, 5, 6, 6], a.allocate(3))
    assert c.num_cached_blocks == 6 and c.num_nodes == 4
    c.lock(n_ab)
    c.clear()
    assert c.num_cached_blocks == 2 and c.num_evictable_blocks == 0 and c.num_nodes == 2
    assert a.num_free == 31 - 2
    assert c.match_prefix([1, 1, 2, 2])[:2] == (ab, 4)
    assert c.match_prefix([1, 1, 3, 3])[:2] == (ab[:1], 2)
    assert c.match_prefix([4, 4])[:2] == ([], 0)
    c.unlock(n_ab)
    c.clear()
    assert c.num_cached_blocks == 0 and a.num_free == 31


def test_bad_input_raises_and_changes_nothing():
    a = BlockAllocator(8)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="page_size"):
            RadixCache(bad, a)
    with pytest.raises(TypeError):
        RadixCache(2, None)
    c = RadixCache(2, a)
    blocks = a.allocate(2)
    with pytest.raises(ValueError, match="blocks"):
        c.insert([1, 2, 3, 4, 5, 6], blocks)  # 3 pages, 2 blocks
    with pytest.raises(ValueError, match="blocks"):
        c.insert([1, 2], [])
    (freed,) = a.allocate(1)
    a.decref(freed)
    for bad in (0, freed, -1, 8, 1000):  # not allocated (or the null block)
        with pytest.raises(RuntimeError, match="not allocated"):
            c.insert([1, 2, 3, 4], [blocks[0], bad])
        assert a.refcount(blocks[0]) == 1  # rolled back
    assert c.num_cached_blocks == 0 and c.match_prefix([1, 2, 3, 4])[:2] == ([], 0)
    with pytest.raises(TypeError):
        c.match_prefix([2**40])
    with pytest.raises(TypeError):
        c.insert([1, 2], [2**40])
    assert c.page_size == 2


def test_destructor_drops_the_tree_references_and_keeps_the_allocator_alive():
    a = BlockAllocator(8)
    c = RadixCache(1, a)
    blocks = a.allocate(3)
    c.insert([1, 2, 3], blocks)
    assert [a.refcount(b) for b in blocks] == [2, 2, 2]
    del c
    gc.collect()
    assert [a.refcount(b) for b in blocks] == [1, 1, 1]
    # the cache keeps its allocator alive: eviction still reaches it
    a2 = BlockAllocator(8)
    c = RadixCache(1, a2)
    (b,) = a2.allocate(1)
    c.insert([1], [b])
    a2.decref(b)
    del a2
    gc.collect()
    assert c.evict(1) == 1
    del c


# ---------------------------------------------------------------------------------------------
# property test: random operations against a naive page-level model


class Model:
    """The cache as a dict from page-aligned token prefixes (tuples) to [block, last_used, locks],
    plus the set of prefixes where tree nodes end. A node spans the pages after its parent's end
    (the longest shorter end) up to its own end; every page of a node has the same last_used and
    lock count, so a node's are those of its last page."""

    def __init__(self, page_size):
        self.P = page_size
        self.pages = {}
        self.ends = set()
        self.root_lock = 0
        self.clock = 0

    def prefixes(self, tokens, k):
        return [tuple(tokens[: j * self.P]) for j in range(1, k + 1)]

    def cached_pages(self, tokens, limit):
        k = 0
        while k < limit and tuple(tokens[: (k + 1) * self.P]) in self.pages:
            k += 1
        return k

    def touch(self, end):
        self.clock += 1
        for j in range(1, len(end) // self.P + 1):
            self.pages[end[: j * self.P]][1] = self.clock

    def match(self, tokens):
        k = self.cached_pages(tokens, len(tokens) // self.P)
        end = tuple(tokens[: k * self.P])
        if k:
            self.ends.add(end)
        self.touch(end)
        return [self.pages[p][0] for p in self.prefixes(tokens, k)], k * self.P, end

    def insert(self, tokens, blocks):
        n = len(tokens) // self.P
        k = self.cached_pages(tokens, n)
        for j, p in enumerate(self.prefixes(tokens, n)[k:], start=k):
            self.pages[p] = [blocks[j], 0, 0]
        if 0 < k < n:
            self.ends.add(tuple(tokens[: k * self.P]))
        end = tuple(tokens[: n * self.P])
        if n:
            self.ends.add(end)
        self.touch(end)
        return end

    def lock_of(self, end):
        return self.pages[end][2] if end else self.root_lock

    def lock(self, end, delta):
        self.root_lock += delta
        for j in range(1, len(end) // self.P + 1):
            self.pages[end[: j * self.P]][2] += delta

    def is_leaf(self, end):
        return not any(len(p) == len(end) + self.P and p[: len(end)] == end for p in self.pages)

    def remove(self, end):
        """Removes the leaf node ending at `end`; returns its blocks."""
        parent = max((e for e in self.ends if len(e) < len(end) and end[: len(e)] == e), key=len, default=())
        gone = [p for p in self.pages if len(parent) < len(p) <= len(end) and end[: len(p)] == p]
        self.ends.remove(end)
        return [self.pages.pop(p)[0] for p in gone]

    def evictable_leaves(self):
        return [e for e in self.ends if self.lock_of(e) == 0 and self.is_leaf(e)]

    def evict(self, n, held):
        """Evicts like the cache; `held` counts the references others hold per block."""
        freed = 0
        while freed < n:
            leaves = self.evictable_leaves()
            if not leaves:
                break
            stamps = sorted(self.pages[e][1] for e in leaves)
            assert len(stamps) < 2 or stamps[0] < stamps[1]  # LRU order is unambiguous
            victim = min(leaves, key=lambda e: self.pages[e][1])
            freed += sum(held.get(b, 0) == 0 for b in self.remove(victim))
        return freed

    def clear(self):
        while True:
            leaves = self.evictable_leaves()
            if not leaves:
                return
            for e in leaves:
                self.remove(e)


NUM_BLOCKS = 24
NUM_SLOTS = 3

tokens_strategy = st.lists(st.integers(0, 1), min_size=1, max_size=9)  # 2 letters: prefixes collide
# op kinds with weights that favour the sequence lifecycle and eviction over clear()
OP_KINDS = ["start", "finish"] * 4 + ["evict", "match"] * 2 + ["pin", "unpin", "publish", "abort", "clear"]


@st.composite
def op_strategy(draw):
    kind = draw(st.sampled_from(OP_KINDS))
    if kind in ("start", "match", "pin"):
        return (kind, draw(tokens_strategy))
    if kind in ("finish", "publish", "abort"):  # which running sequence (modulo their number)
        return (kind, draw(st.integers(0, NUM_SLOTS - 1)))
    if kind == "unpin":
        return (kind, draw(st.integers(0, 3)))
    if kind == "evict":
        return (kind, draw(st.integers(-1, 6)))
    return (kind,)


@settings(max_examples=200, deadline=None)
@given(page_size=st.sampled_from([1, 2, 3]), operations=st.lists(op_strategy(), min_size=20, max_size=80))
def test_random_operations_match_the_model(page_size, operations):
    a = BlockAllocator(NUM_BLOCKS)
    cache = RadixCache(page_size, a)
    model = Model(page_size)
    seqs = [None] * NUM_SLOTS  # each: dict(tokens, blocks (its own references), node, end)
    pins = []  # (node, end) locked without holding block references
    node_of = {(): 0}  # node end -> node id, as observed
    P = page_size

    def held():
        h = {}
        for s in seqs:
            for b in s["blocks"] if s else ():
                h[b] = h.get(b, 0) + 1
        return h

    def observe(node, end):
        if end in node_of:
            assert node_of[end] == node  # node ids are stable (splits keep the lower part's id)
        else:
            assert node not in node_of.values()
            node_of[end] = node

    def forget_dead():
        for e in [e for e in node_of if e and e not in model.ends]:
            del node_of[e]

    def match(tokens):
        got = cache.match_prefix(tokens)
        want_blocks, want_n, end = model.match(tokens)
        assert got[:2] == (want_blocks, want_n)
        observe(got[2], end)
        return got, end

    def evict(n):
        locked_blocks = [v[0] for v in model.pages.values() if v[2] > 0]
        free_before = a.num_free
        want = model.evict(n, held())
        forget_dead()
        freed = cache.evict(n)
        assert freed == want
        assert a.num_free - free_before == freed  # exactly the blocks that went free
        for b in locked_blocks:  # never a block under a locked node
            assert a.refcount(b) >= 1
        return freed

    for op in operations:
        kind = op[0]
        if kind == "start":  # in the first free slot
            tokens = op[1]
            if None not in seqs:
                continue
            i = seqs.index(None)
            (blocks, n, node), end = match(tokens)
            cache.lock(node)
            model.lock(end, +1)
            for b in blocks:  # the sequence shares the cached prefix
                a.incref(b)
            need = ceil_div(len(tokens), P) - len(blocks)
            if need > a.num_free:
                evict(need - a.num_free)
            if need > a.num_free:  # cannot run: give back what it took
                for b in blocks:
                    a.decref(b)
                cache.unlock(node)
                model.lock(end, -1)
            else:
                seqs[i] = dict(tokens=tokens, blocks=blocks + a.allocate(need), node=node, end=end)
        elif kind in ("finish", "abort"):
            running = [i for i, s in enumerate(seqs) if s]
            if not running:
                continue
            i = running[op[1] % len(running)]
            s = seqs[i]
            if kind == "finish":
                node = cache.insert(s["tokens"], s["blocks"])
                observe(node, model.insert(s["tokens"], s["blocks"]))
            cache.unlock(s["node"])
            model.lock(s["end"], -1)
            seqs[i] = None
            for b in s["blocks"]:
                a.decref(b)
        elif kind == "publish":  # cache a running sequence's pages; it keeps its references
            running = [s for s in seqs if s]
            if not running:
                continue
            s = running[op[1] % len(running)]
            node = cache.insert(s["tokens"], s["blocks"])
            observe(node, model.insert(s["tokens"], s["blocks"]))
        elif kind == "match":
            match(op[1])
        elif kind == "pin":
            (_, _, node), end = match(op[1])
            cache.lock(node)
            model.lock(end, +1)
            pins.append((node, end))
        elif kind == "unpin":
            if not pins:
                continue
            node, end = pins.pop(op[1] % len(pins))
            cache.unlock(node)
            model.lock(end, -1)
            if model.lock_of(end) == 0:
                with pytest.raises(RuntimeError, match="not locked"):
                    cache.unlock(node)
        elif kind == "evict":
            evict(op[1])
        else:
            locked_blocks = [v[0] for v in model.pages.values() if v[2] > 0]
            model.clear()
            forget_dead()
            cache.clear()
            assert all(a.refcount(b) >= 1 for b in locked_blocks)

        # invariants after every operation
        assert cache.num_cached_blocks == len(model.pages)
        assert cache.num_nodes == len(model.ends)
        assert cache.num_evictable_blocks == sum(v[2] == 0 for v in model.pages.values())
        tree_blocks = [v[0] for v in model.pages.values()]
        assert len(set(tree_blocks)) == len(tree_blocks)
        h = held()
        for b in tree_blocks:
            h[b] = h.get(b, 0) + 1
        for b in range(1, NUM_BLOCKS):
            assert a.refcount(b) == h.get(b, 0)
        referenced = sum(1 for b in range(1, NUM_BLOCKS) if h.get(b, 0) > 0)
        assert a.num_free + referenced == NUM_BLOCKS - 1
        assert all(e in model.ends for e in node_of if e)  # no observed id outlives its node

    # the end of every sequence: release everything, then the tree empties completely
    for s in seqs:
        if s:
            cache.unlock(s["node"])
            for b in s["blocks"]:
                a.decref(b)
    for node, _ in pins:
        cache.unlock(node)
    cache.clear()
    assert cache.num_cached_blocks == 0 and cache.num_nodes == 0
    assert a.num_free == NUM_BLOCKS - 1
