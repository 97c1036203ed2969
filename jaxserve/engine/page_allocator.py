"""The KV page allocator: a free list with reference counts (host side, no jax).

A page is shared when several sequences point at it: the n samples of one prompt share its full
pages. A page returns to the free list when its last holder frees it.
"""

from __future__ import annotations

from collections import deque


class OutOfPages(RuntimeError):
    pass


class PageAllocator:
    def __init__(self, num_pages: int, page_size: int):
        self.num_pages = num_pages
        self.page_size = page_size
        self.ref_counts = [0] * num_pages
        self.free_pages: deque[int] = deque(range(num_pages))

    @property
    def num_free_pages(self) -> int:
        return len(self.free_pages)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_pages / self.num_pages

    def pages_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def can_allocate(self, num_pages: int) -> bool:
        return num_pages <= self.num_free_pages

    def allocate(self, num_pages: int) -> list[int]:
        if not self.can_allocate(num_pages):
            raise OutOfPages(f"asked for {num_pages} pages, {self.num_free_pages} free")
        pages = [self.free_pages.popleft() for _ in range(num_pages)]
        for page in pages:
            self.ref_counts[page] = 1
        return pages

    def share(self, pages: list[int]) -> list[int]:
        """Another holder takes the same pages (no copy)."""
        for page in pages:
            assert self.ref_counts[page] > 0, f"sharing free page {page}"
            self.ref_counts[page] += 1
        return list(pages)

    def free(self, pages: list[int]) -> None:
        for page in pages:
            assert self.ref_counts[page] > 0, f"double free of page {page}"
            self.ref_counts[page] -= 1
            if self.ref_counts[page] == 0:
                self.free_pages.append(page)

    def check_all_free(self) -> None:
        """The allocator invariant once nothing runs: every page is back, none is held."""
        held = [p for p, c in enumerate(self.ref_counts) if c]
        assert not held, f"pages still held: {held[:16]}"
        assert sorted(self.free_pages) == list(range(self.num_pages)), "free list corrupted"
