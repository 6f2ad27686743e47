"""An incremental, depth-limited suffix trie over a token sequence, with occurrence counts.

Why a trie and not one index per n-gram size: one walk gives, for the text
that ends the history, (a) the longest earlier match, (b) how often each
continuation followed it (a frequency, not only "the latest occurrence"), and
(c) the same statistics one token deeper along any proposed draft, which is
what a per-token confidence needs (SuffixDecoding, arXiv 2411.04975).

Cost per appended token is O(m), m = the current match length capped at
`depth`, independent of the history's length: the trie keeps a list of the
nodes of the suffixes that end at the last token ("active" nodes) and extends
each by the new token. A string seen once becomes a *leaf* (count 1, no
children): its continuation is read from the token array at `last + 1`, and
the leaf grows a child only when a second occurrence arrives. Unique text
therefore costs a node or two per token (novel prose), repeated text up to
`depth` (a copy), and a prompt of 8k tokens is ingested in a few tens of ms.

Node layout (a list, for speed): [count, cont, last, children, best]
  count    occurrences of the node's string
  cont     occurrences followed by a tracked continuation (sum of children's counts)
  last     end position (index of the last token) of the latest occurrence
  children {token: node}, or None for a leaf
  best     the child with the highest count (ties: the most recently seen)
"""

from __future__ import annotations

from typing import Sequence

COUNT, CONT, LAST, CHILDREN, BEST = range(5)
SEPARATOR = -1  # between documents of one trie: no match or copy crosses it

Node = list


def _new_root() -> Node:
    return [0, 0, -1, {}, None]


class SuffixTrie:
    """Substrings of `tokens` up to `depth` tokens long, extended one token at a time.

    `active[d - 1]` is the node of the suffix of length d (d = 1..len(active));
    only the last of them may be a leaf.
    """

    def __init__(self, depth: int = 24) -> None:
        if depth < 2:
            raise ValueError(f"suffix trie depth must be >= 2, got {depth}")
        self.depth = depth
        self.tokens: list[int] = []
        self.root: Node = _new_root()
        self.active: list[Node] = []

    def __len__(self) -> int:
        return len(self.tokens)

    def clear(self) -> None:
        self.tokens = []
        self.root = _new_root()
        self.active = []

    def end_document(self) -> None:
        """Close the current document: later text never matches across the boundary."""
        if self.tokens and self.tokens[-1] != SEPARATOR:
            self.tokens.append(SEPARATOR)
        self.active = []

    def extend(self, new_tokens: Sequence[int]) -> None:
        """Append tokens: O(match length) each, whatever the text's length."""
        tokens = self.tokens
        depth = self.depth
        root = self.root
        active = self.active
        for t in new_tokens:
            i = len(tokens)
            tokens.append(t)
            new_active: list[Node] = []
            parent = root
            d = 0  # length of parent's string; parent ended at i - 1 (the root: empty)
            n_parents = len(active) + 1
            while True:
                children = parent[CHILDREN]
                child = children.get(t)
                if child is None:
                    child = children[t] = [1, 0, i, None, None]
                else:
                    if child[COUNT] == 1 and d + 1 < depth:  # a leaf seen again: track continuations from now on
                        e = child[LAST]
                        nxt = tokens[e + 1]
                        # e + 1 == i: that continuation is this token, added when child is the parent below.
                        if e + 1 < i and nxt != SEPARATOR:
                            grand = [1, 0, e + 1, None, None]
                            child[CHILDREN] = {nxt: grand}
                            child[CONT] = 1
                            child[BEST] = grand
                        else:
                            child[CHILDREN] = {}
                    child[COUNT] += 1
                    child[LAST] = i
                parent[CONT] += 1
                best = parent[BEST]
                if best is None or child[COUNT] >= best[COUNT]:
                    parent[BEST] = child
                new_active.append(child)
                d += 1
                if d >= depth or d >= n_parents:
                    break
                parent = active[d - 1]
                if parent[CHILDREN] is None:
                    break  # a string seen once: its extensions are unique, read from the token array
            active = new_active
        self.active = active

    def longest_match(self) -> tuple[int, Node | None]:
        """(d, node) for the longest suffix (d < depth) that also ends earlier in the text, else (0, None).

        Counts fall with length, so it is the first node from the longest
        down with count >= 2; its earlier occurrences end before the last
        token, so each has a continuation, counted in its children.
        """
        active = self.active
        for d in range(min(len(active), self.depth - 1), 0, -1):
            node = active[d - 1]
            if node[COUNT] >= 2:
                return d, node
        return 0, None


def continuation(
    trie: SuffixTrie, node: Node, d: int, k: int, *, virtual: bool = True
) -> tuple[list[int], list[tuple[int, int, int]]]:
    """Up to k tokens after `node` (a string of length d), most frequent child first.

    Returns the tokens and, per token, (context length, n, c): the token
    followed a context of that length c times out of the n times the context
    was followed by anything. Past the tracked part (a leaf, or the depth
    limit) the walk copies the text after the latest occurrence, as (ctx, 1, 1).
    `virtual`: the copy may run into the draft itself (the text repeats with a
    period shorter than the draft: only for the trie whose text ends now).
    """
    tokens = trie.tokens
    n_tok = len(tokens)
    out: list[int] = []
    feats: list[tuple[int, int, int]] = []
    src = -1
    while len(out) < k:
        if src < 0:
            if node[CHILDREN] is not None:
                n = node[CONT]
                if n == 0:
                    break
                best = node[BEST]
                out.append(tokens[best[LAST]])
                feats.append((d, n, best[COUNT]))
                d += 1
                node = best
                continue
            src = node[LAST] + 1
        if src < n_tok:
            tok = tokens[src]
        elif virtual and src - n_tok < len(out):
            tok = out[src - n_tok]
        else:
            break
        if tok == SEPARATOR:
            break
        out.append(tok)
        feats.append((d, 1, 1))
        d += 1
        src += 1
    return out, feats


class Follower:
    """The longest match of another text's suffix in a trie that text is not part of.

    `nodes[d - 1]` is the trie's node for the text's suffix of length d, as far
    as the trie tracks it; past a leaf the match goes on in the trie's token
    array (`pos`: end of the matched occurrence there, `length`). Per token:
    O(match length), like the trie's own extension.
    """

    def __init__(self, trie: SuffixTrie) -> None:
        self.trie = trie
        self.nodes: list[Node] = []
        self.pos = -1
        self.length = 0

    def reset(self) -> None:
        self.nodes = []
        self.pos = -1
        self.length = 0

    def feed(self, new_tokens: Sequence[int]) -> None:
        trie = self.trie
        tokens = trie.tokens
        depth = trie.depth
        for t in new_tokens:
            nodes: list[Node] = []
            child = trie.root[CHILDREN].get(t)
            if child is not None:
                nodes.append(child)
                for node in self.nodes:
                    if len(nodes) >= depth:
                        break
                    children = node[CHILDREN]
                    child = children.get(t) if children is not None else None
                    if child is None:
                        break
                    nodes.append(child)
            self.nodes = nodes
            pos = self.pos
            if pos >= 0 and pos + 1 < len(tokens) and tokens[pos + 1] == t and self.length + 1 > len(nodes):
                self.pos, self.length = pos + 1, self.length + 1
            elif nodes:
                self.pos, self.length = nodes[-1][LAST], len(nodes)
            else:
                self.pos, self.length = -1, 0

    def proposal(self, k: int) -> tuple[list[int], list[tuple[int, int, int]]]:
        """The continuation of the longest match (see `continuation`); ([], []) without a match."""
        if self.length == 0:
            return [], []
        nodes = self.nodes
        if self.length == len(nodes) and nodes[-1][CHILDREN] is not None:
            return continuation(self.trie, nodes[-1], self.length, k, virtual=False)
        tokens = self.trie.tokens
        out: list[int] = []
        feats: list[tuple[int, int, int]] = []
        src, d = self.pos + 1, self.length
        while len(out) < k and src < len(tokens) and tokens[src] != SEPARATOR:
            out.append(tokens[src])
            feats.append((d, 1, 1))
            src += 1
            d += 1
        return out, feats
