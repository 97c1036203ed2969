"""The KV page allocator: reference counts, an LRU free list and a prefix cache (host side, no
jax).

A page is shared when several sequences point at it: the n samples of one prompt share its full
pages, and so do requests whose prompts start alike. Every full page is known by a key that chains
the key of the page before it with the page's own tokens, so one key names one whole prefix. A page
whose last holder frees it goes to the end of the free list but keeps its key and its K/V: until it
is handed out again (from the front: least recently freed first) a new sequence with the same prefix
takes it back instead of recomputing it.

A request's ``cache_salt`` becomes the key chain's root (in place of None), so requests with
different salts never share a page, however alike their prompts (vLLM's cache salting).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator

PageKey = tuple[Hashable, tuple[int, ...]]  # (key of the previous page or None, this page's tokens)


class OutOfPages(RuntimeError):
    pass


class PageAllocator:
    def __init__(self, num_pages: int, page_size: int, enable_prefix_caching: bool = True):
        self.num_pages = num_pages
        self.page_size = page_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_pages
        self.free_pages: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_pages))
        self.cached: dict[PageKey, int] = {}  # prefix key -> page holding that prefix's last page
        self.page_keys: list[PageKey | None] = [None] * num_pages
        self.num_cache_hits = 0  # pages taken from the cache instead of being recomputed

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
        pages = []
        for _ in range(num_pages):
            page, _ = self.free_pages.popitem(last=False)
            key = self.page_keys[page]
            if key is not None:  # evict: the page gets new contents
                del self.cached[key]
                self.page_keys[page] = None
            self.ref_counts[page] = 1
            pages.append(page)
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
                self.free_pages[page] = None

    # ---- prefix cache -------------------------------------------------------------------------
    def page_key(self, previous: PageKey | None, tokens: list[int]) -> PageKey:
        return (hash(previous) if previous is not None else None, tuple(tokens))

    @staticmethod
    def _root(salt: str | None) -> Hashable:
        """What the first page's key chains from: a str pair never equals a PageKey."""
        return None if salt is None else ("cache_salt", salt)

    def _cached_prefix(self, token_ids: list[int],
                       salt: str | None = None) -> Iterator[tuple[PageKey, int]]:
        """(key, page) of each full page of token_ids' longest cached prefix, in order."""
        keys: list[PageKey] = []
        if not self.enable_prefix_caching:
            return
        root = self._root(salt)
        for start in range(0, len(token_ids) - self.page_size + 1, self.page_size):
            key = self.page_key(keys[-1] if keys else root, token_ids[start:start + self.page_size])
            page = self.cached.get(key)
            if page is None:
                return
            keys.append(key)
            yield key, page

    def cached_prefix_len(self, token_ids: list[int], salt: str | None = None) -> int:
        """Tokens of token_ids' longest cached prefix, taking nothing (what lookup would find)."""
        return self.page_size * sum(1 for _ in self._cached_prefix(token_ids, salt))

    def lookup(self, token_ids: list[int],
               salt: str | None = None) -> tuple[list[int], list[PageKey]]:
        """Take the pages of the longest cached prefix of token_ids (full pages only); returns
        them with their keys."""
        pages: list[int] = []
        keys: list[PageKey] = []
        for key, page in self._cached_prefix(token_ids, salt):
            if self.ref_counts[page] == 0:
                del self.free_pages[page]
            self.ref_counts[page] += 1
            pages.append(page)
            keys.append(key)
        self.num_cache_hits += len(pages)
        return pages, keys

    def register(self, keys: list[PageKey], token_ids: list[int], pages: list[int],
                 num_full_pages: int, salt: str | None = None) -> None:
        """Extend a sequence's page keys to its first num_full_pages (now computed), offering
        each new page to the cache."""
        if not self.enable_prefix_caching:
            return
        ps = self.page_size
        root = self._root(salt)
        for i in range(len(keys), num_full_pages):
            key = self.page_key(keys[-1] if keys else root, token_ids[i * ps:(i + 1) * ps])
            keys.append(key)
            page = pages[i]
            if key not in self.cached and self.page_keys[page] is None:
                self.cached[key] = page
                self.page_keys[page] = key

    def check_all_free(self) -> None:
        """The allocator invariant once nothing runs: every page is back, none is held."""
        held = [p for p, c in enumerate(self.ref_counts) if c]
        assert not held, f"pages still held: {held[:16]}"
        assert sorted(self.free_pages) == list(range(self.num_pages)), "free list corrupted"
        assert all(self.page_keys[p] == k for k, p in self.cached.items()), "cache index corrupted"
