"""KV bookkeeping: BlockAllocator (free list + ref counts, block 0 reserved) and SeqPages
(append / truncate / release), with a property test over random operation sequences."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specdec_native import _core

BlockAllocator = _core.BlockAllocator
SeqPages = _core.SeqPages


def ceil_div(a, b):
    return -(-a // b)


# ---------------------------------------------------------------------------------------------
# BlockAllocator


def test_allocator_never_hands_out_block_zero():
    a = BlockAllocator(9)
    assert a.num_blocks == 9 and a.num_free == 8
    got = a.allocate(8)
    assert sorted(got) == list(range(1, 9))
    assert a.num_free == 0
    assert all(a.refcount(b) == 1 for b in got)
    assert a.refcount(0) == 0


def test_allocate_is_all_or_nothing():
    a = BlockAllocator(6)
    first = a.allocate(3)
    assert len(first) == 3 and a.num_free == 2
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        a.allocate(3)
    assert a.num_free == 2  # nothing changed
    assert all(a.refcount(b) == 1 for b in first)
    rest = a.allocate(2)
    assert sorted(first + rest) == [1, 2, 3, 4, 5]
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        a.allocate(1)
    assert a.allocate(0) == []


def test_allocate_negative_is_a_value_error():
    with pytest.raises(ValueError):
        BlockAllocator(4).allocate(-1)


def test_refcounts_and_free_at_zero():
    a = BlockAllocator(4)
    (b,) = a.allocate(1)
    a.incref(b)
    a.incref(b)
    assert a.refcount(b) == 3
    a.decref(b)
    a.decref(b)
    assert a.refcount(b) == 1 and a.num_free == 2
    a.decref(b)
    assert a.refcount(b) == 0 and a.num_free == 3
    # a freed block comes back with ref count 1
    got = a.allocate(3)
    assert b in got and a.refcount(b) == 1


def test_decref_or_incref_of_a_free_block_raises():
    a = BlockAllocator(4)
    (b,) = a.allocate(1)
    a.decref(b)
    with pytest.raises(RuntimeError, match="not allocated"):
        a.decref(b)
    assert a.num_free == 3  # the failed decref did not push b twice
    with pytest.raises(RuntimeError, match="not allocated"):
        a.incref(b)
    for bad in (0, 3, -1, 4, 100):  # 3 was never allocated; 0 is the null block
        with pytest.raises(RuntimeError, match="not allocated"):
            a.decref(bad)
    assert a.num_free == 3
    assert sorted(a.allocate(3)) == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# SeqPages


def test_append_counts_blocks_and_last_page_len():
    a = BlockAllocator(32)
    s = SeqPages(4)
    assert s.num_tokens == 0 and s.blocks == [] and s.last_page_len == 0
    expected_tokens = 0
    for n in (1, 2, 1, 1, 7, 0, 4, 3):
        s.append(a, n)
        expected_tokens += n
        assert s.num_tokens == expected_tokens
        assert len(s.blocks) == ceil_div(expected_tokens, 4)
        assert s.last_page_len == (expected_tokens - 1) % 4 + 1
        assert len(set(s.blocks)) == len(s.blocks) and 0 not in s.blocks
        assert a.num_free == 31 - len(s.blocks)


def test_append_out_of_blocks_changes_nothing():
    a = BlockAllocator(4)  # 3 usable blocks
    s = SeqPages(4)
    s.append(a, 9)  # 3 blocks, last one holds 1
    blocks = list(s.blocks)
    s.append(a, 3)  # fits in the last page
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        s.append(a, 1)
    assert s.num_tokens == 12 and s.blocks == blocks and a.num_free == 0
    other = SeqPages(4)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        other.append(a, 1)
    assert other.num_tokens == 0 and other.blocks == []


def test_truncate_frees_exactly_the_blocks_past_the_boundary():
    a = BlockAllocator(16)
    s = SeqPages(4)
    s.append(a, 14)  # 4 blocks
    blocks = list(s.blocks)
    s.truncate(a, 9)  # 9 tokens need 3 blocks
    assert s.blocks == blocks[:3] and s.num_tokens == 9 and s.last_page_len == 1
    assert a.refcount(blocks[3]) == 0 and all(a.refcount(b) == 1 for b in blocks[:3])
    assert a.num_free == 15 - 3
    s.truncate(a, 8)  # exactly 2 full pages
    assert s.blocks == blocks[:2] and s.last_page_len == 4
    s.truncate(a, 8)  # no-op
    s.truncate(a, 100)  # longer than the sequence: no-op
    assert s.blocks == blocks[:2] and s.num_tokens == 8
    s.truncate(a, 5)  # within the same block count
    assert s.blocks == blocks[:2] and s.num_tokens == 5 and s.last_page_len == 1
    s.release(a)
    assert s.blocks == [] and s.num_tokens == 0 and a.num_free == 15


def test_truncate_then_append_reuses_the_freed_blocks():
    a = BlockAllocator(16)
    s = SeqPages(4)
    s.append(a, 16)
    blocks = list(s.blocks)
    s.truncate(a, 5)
    freed = set(blocks[2:])
    s.append(a, 11)  # back to 16 tokens
    assert s.blocks[:2] == blocks[:2]
    assert set(s.blocks[2:]) == freed
    assert a.num_free == 15 - 4


def test_release_of_shared_block_keeps_it_for_the_other_holder():
    a = BlockAllocator(8)
    s = SeqPages(2)
    s.append(a, 4)
    shared = s.blocks[0]
    a.incref(shared)  # e.g. a prefix cache holds it too
    s.release(a)
    assert a.refcount(shared) == 1 and a.num_free == 6
    a.decref(shared)
    assert a.num_free == 7


def test_page_size_must_be_positive():
    # SeqPages(0) once divided by zero (SIGFPE) on its first append.
    for bad in (0, -4):
        with pytest.raises(ValueError, match="page_size"):
            SeqPages(bad)


def test_append_of_more_blocks_than_int32_is_refused():
    # 2**32 + 1 tokens at page size 1 need 2**32 + 1 blocks; that count once wrapped to 1 in a
    # 32-bit cast, handing out one block for four billion tokens.
    a = BlockAllocator(8)
    s = SeqPages(1)
    for n in (2**32 + 1, 2**31, 2**40):
        with pytest.raises(RuntimeError, match="out of KV blocks"):
            s.append(a, n)
        assert s.num_tokens == 0 and s.blocks == [] and a.num_free == 7
    with pytest.raises(ValueError):
        s.append(a, -1)
    assert s.num_tokens == 0


# ---------------------------------------------------------------------------------------------
# property test

NUM_BLOCKS = 24
NUM_SEQS = 4

ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(["append", "truncate", "release"]),
        st.integers(0, NUM_SEQS - 1),
        st.integers(0, 40),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(page_size=st.sampled_from([1, 3, 4, 16]), operations=ops_strategy)
def test_random_operations_keep_invariants(page_size, operations):
    a = BlockAllocator(NUM_BLOCKS)
    seqs = [SeqPages(page_size) for _ in range(NUM_SEQS)]
    tokens = [0] * NUM_SEQS
    for op, i, n in operations:
        s = seqs[i]
        if op == "append":
            need = ceil_div(tokens[i] + n, page_size) - ceil_div(tokens[i], page_size)
            free_before, blocks_before = a.num_free, list(s.blocks)
            if need > free_before:
                with pytest.raises(RuntimeError, match="out of KV blocks"):
                    s.append(a, n)
                assert a.num_free == free_before and s.blocks == blocks_before
            else:
                s.append(a, n)
                tokens[i] += n
                assert s.blocks[: len(blocks_before)] == blocks_before
        elif op == "truncate":
            keep = min(n, tokens[i])
            blocks_before = list(s.blocks)
            s.truncate(a, n)
            tokens[i] = keep
            assert s.blocks == blocks_before[: ceil_div(keep, page_size)]
            for b in blocks_before[ceil_div(keep, page_size):]:
                assert a.refcount(b) == 0
        else:
            s.release(a)
            tokens[i] = 0

        held = [b for q in seqs for b in q.blocks]
        assert len(held) == NUM_BLOCKS - 1 - a.num_free
        assert len(set(held)) == len(held)  # no block held twice
        assert 0 not in held
        assert all(a.refcount(b) == 1 for b in held)
        for q, t in zip(seqs, tokens):
            assert q.num_tokens == t
            assert len(q.blocks) == ceil_div(t, page_size)
            assert q.last_page_len == (0 if t == 0 else (t - 1) % page_size + 1)
