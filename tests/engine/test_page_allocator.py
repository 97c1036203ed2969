import pytest

from jaxserve.engine.page_allocator import OutOfPages, PageAllocator


def test_allocate_and_free_round_trip():
    alloc = PageAllocator(num_pages=8, page_size=4)
    pages = alloc.allocate(3)
    assert len(set(pages)) == 3 and alloc.num_free_pages == 5
    alloc.free(pages)
    alloc.check_all_free()


def test_shared_pages_return_only_after_last_holder_frees():
    alloc = PageAllocator(num_pages=4, page_size=4)
    pages = alloc.allocate(2)
    shared = alloc.share(pages)
    alloc.free(pages)
    assert alloc.num_free_pages == 2  # still held by the sharer
    alloc.free(shared)
    alloc.check_all_free()


def test_over_allocation_raises_and_double_free_is_caught():
    alloc = PageAllocator(num_pages=2, page_size=4)
    with pytest.raises(OutOfPages):
        alloc.allocate(3)
    pages = alloc.allocate(1)
    alloc.free(pages)
    with pytest.raises(AssertionError):
        alloc.free(pages)


def test_pages_needed_rounds_up():
    alloc = PageAllocator(num_pages=2, page_size=16)
    assert [alloc.pages_needed(n) for n in (0, 1, 16, 17, 32)] == [0, 1, 1, 2, 2]


def test_prefix_cache_hands_back_freed_pages_by_content():
    alloc = PageAllocator(num_pages=8, page_size=4)
    tokens = list(range(10))  # two full pages and a partial one
    pages = alloc.allocate(3)
    keys = []
    alloc.register(keys, tokens, pages, num_full_pages=2)
    alloc.free(pages)
    hit, hit_keys = alloc.lookup(tokens[:9])
    assert hit == pages[:2] and hit_keys == keys
    assert alloc.lookup([0, 1, 2, 9])[0] == []  # other content, no hit
    alloc.free(hit)
    alloc.check_all_free()


def test_prefix_cache_evicts_least_recently_freed_first():
    alloc = PageAllocator(num_pages=2, page_size=2)
    a, b = alloc.allocate(1), alloc.allocate(1)
    alloc.register([], [1, 2], a, 1)
    alloc.register([], [3, 4], b, 1)
    alloc.free(a)
    alloc.free(b)
    alloc.allocate(1)  # takes a's page: [1, 2] is evicted, [3, 4] stays
    assert alloc.lookup([1, 2, 0])[0] == []
    assert alloc.lookup([3, 4, 0])[0] == b


def test_cache_salt_roots_a_chain_of_its_own():
    alloc = PageAllocator(num_pages=8, page_size=4)
    tokens = list(range(9))
    pages = alloc.allocate(3)
    alloc.register([], tokens, pages, num_full_pages=2, salt="alpha")
    alloc.free(pages)
    assert alloc.cached_prefix_len(tokens) == 0  # the same tokens, no salt: no hit
    assert alloc.lookup(tokens, salt="beta")[0] == []
    assert alloc.cached_prefix_len(tokens, salt="alpha") == 8
    hit, _ = alloc.lookup(tokens, salt="alpha")
    assert hit == pages[:2]
    alloc.free(hit)
    alloc.check_all_free()
