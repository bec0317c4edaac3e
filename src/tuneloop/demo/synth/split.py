"""Near-copy detection and a train/test split that keeps near-copies on one side.

Near-copy: two documents whose sets of word 3-shingles have Jaccard similarity of at least
:data:`NEAR_COPY_THRESHOLD`, after lower-casing and replacing every run of digits with ``#``
(so two documents that differ only in their numbers, the answers included, count as copies).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

NEAR_COPY_THRESHOLD = 0.5
SHINGLE_WORDS = 3
_TOKEN = re.compile(r"[a-z]+|\d+")


def shingles(text: str) -> frozenset[str]:
    """Word 3-shingles of ``text``, lower-cased, digit runs masked as ``#``."""
    words = ["#" if token[0].isdigit() else token for token in _TOKEN.findall(text.lower())]
    if len(words) <= SHINGLE_WORDS:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    shared = len(a & b)
    return shared / (len(a) + len(b) - shared)


def near_copy_pairs(sets: Sequence[frozenset[str]], threshold: float = NEAR_COPY_THRESHOLD) -> list[tuple[int, int]]:
    """All pairs (i < j) with Jaccard >= threshold, exactly, without comparing every pair.

    PPJoin (Xiao et al., 2008): order each set's shingles rarest first and visit sets by size.
    A pair with Jaccard >= t shares a shingle early in both orders (prefix filter), and the
    positions of the shared shingles bound the overlap still reachable (positional filter);
    only pairs that survive both filters are compared exactly.
    """
    frequency = Counter(token for s in sets for token in s)
    sizes = [len(s) for s in sets]
    index: dict[str, list[tuple[int, int]]] = defaultdict(list)  # shingle -> (set, position)
    pairs: list[tuple[int, int]] = []
    for y in sorted(range(len(sets)), key=lambda k: (sizes[k], k)):
        ordered = sorted(sets[y], key=lambda token: (frequency[token], token))
        overlaps = _prefix_overlaps(ordered, sizes, index, threshold)
        for x, seen in overlaps.items():
            if seen > 0 and jaccard(sets[x], sets[y]) >= threshold:
                pairs.append((min(x, y), max(x, y)))
        # Later sets are at least as large, so a shorter prefix suffices in the index.
        index_prefix = len(ordered) - math.ceil(2 * threshold / (1 + threshold) * len(ordered)) + 1
        for position, token in enumerate(ordered[:index_prefix]):
            index[token].append((y, position))
    return sorted(pairs)


def _prefix_overlaps(
    ordered: list[str], sizes: list[int], index: dict[str, list[tuple[int, int]]], t: float
) -> dict[int, int]:
    """Earlier sets sharing a prefix shingle with this one, and how many; negative = ruled out."""
    size_y = len(ordered)
    smallest = t * size_y  # Jaccard <= |x| / |y|
    share = t / (1 + t)  # Jaccard >= t  <=>  overlap >= t / (1 + t) * (|x| + |y|)
    ruled_out = -(10**9)
    overlaps: dict[int, int] = {}
    for j, token in enumerate(ordered[: size_y - math.ceil(t * size_y) + 1]):
        rest_y = size_y - j - 1
        for x, i in index.get(token, ()):
            size_x = sizes[x]
            if size_x < smallest:
                continue
            seen = overlaps.get(x, 0) + 1
            reachable = seen + min(size_x - i - 1, rest_y)
            overlaps[x] = seen if reachable >= share * (size_x + size_y) - 1e-9 else ruled_out
    return overlaps


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def assign_splits(
    texts: Sequence[str], skeletons: Sequence[str], strata: Sequence[str], test_fraction: float, seed: int
) -> list[str]:
    """'train' or 'test' per document; same-skeleton documents and near-copies share a side.

    Documents are grouped (same skeleton, or linked by a chain of near-copies). Within each
    stratum (the style), whole groups go to test in a seed-dependent order while they fit in
    the stratum's share of ``test_fraction``, so every style is represented on both sides.
    """
    count = len(texts)
    groups = _UnionFind(count)
    first_with_skeleton: dict[str, int] = {}
    for i, skeleton in enumerate(skeletons):
        groups.union(first_with_skeleton.setdefault(skeleton, i), i)
    for i, j in near_copy_pairs([shingles(t) for t in texts]):
        groups.union(i, j)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(count):
        members[groups.find(i)].append(i)

    def order(root: int) -> str:
        return hashlib.blake2b(f"{seed}:{skeletons[root]}".encode(), digest_size=8).hexdigest()

    stratum_sizes = Counter(strata)
    room = {stratum: round(test_fraction * size) for stratum, size in stratum_sizes.items()}
    splits = ["train"] * count
    for root in sorted(members, key=order):
        group = members[root]
        stratum = strata[root]  # a group spanning styles counts against its first member's style
        if len(group) <= room[stratum]:
            room[stratum] -= len(group)
            for i in group:
                splits[i] = "test"
    return splits
