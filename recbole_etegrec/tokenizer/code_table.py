"""Code table: item id -> (c0, c1, c2, suffix), with a prefix index for constrained decoding.

The suffix follows TIGER: items whose semantic codes collide get suffix 0, 1, 2, ... inside their
group (in item-id order, so the assignment is deterministic). Row 0 (RecBole's padding item) is -1.

The prefix index stores, for every level l, the sorted integer keys of all valid code prefixes of
length l and a boolean matrix of which next codes extend each prefix. A lookup is one
``searchsorted`` per beam step, vectorised over all beams (no Python trie walk per beam).
"""
import torch

from recbole_etegrec.errors import EtegrecError


def _keys(codes, base):
    """Integer key of each row of ``codes`` [N, l] (base-``base`` number; 0 for l == 0)."""
    key = torch.zeros(codes.shape[0], dtype=torch.long, device=codes.device)
    for level in range(codes.shape[1]):
        key = key * base + codes[:, level]
    return key


class CodeTable:
    def __init__(self, codes, code_num):
        """``codes``: LongTensor [n_items, code_length], row 0 = padding (-1)."""
        self.codes = codes.long().cpu()
        self.code_num = code_num  # size of every level's vocabulary (suffix included)
        self.code_length = self.codes.shape[1]
        real = self.codes[1:]
        self.prefix_keys, self.next_allowed = [], []
        for level in range(self.code_length):
            keys = _keys(real[:, :level], code_num)
            uniq, inverse = torch.unique(keys, return_inverse=True)
            allowed = torch.zeros(len(uniq), code_num, dtype=torch.bool)
            allowed[inverse, real[:, level]] = True
            self.prefix_keys.append(uniq)
            self.next_allowed.append(allowed)
        full = _keys(real, code_num)
        order = torch.argsort(full)
        self.full_keys, self.full_items = full[order], order + 1
        if len(torch.unique(full)) != len(full):
            raise EtegrecError("code table has duplicate code tuples: suffixes must separate items")

    @property
    def n_items(self) -> int:
        return self.codes.shape[0]

    @property
    def max_suffix(self) -> int:
        return int(self.codes[1:, -1].max()) if self.n_items > 1 else 0

    def allowed_next(self, prefixes) -> torch.Tensor:
        """BoolTensor [N, code_num]: codes that extend each prefix [N, l] towards a real item."""
        level = prefixes.shape[1]
        keys = _keys(prefixes.cpu(), self.code_num)
        table_keys = self.prefix_keys[level]
        pos = torch.searchsorted(table_keys, keys).clamp(max=len(table_keys) - 1)
        found = table_keys[pos] == keys
        allowed = self.next_allowed[level][pos] & found.unsqueeze(1)
        return allowed.to(prefixes.device)

    def lookup(self, codes) -> torch.Tensor:
        """Item ids [N] for full code tuples [N, code_length]; -1 where no item has them."""
        keys = _keys(codes.cpu(), self.code_num)
        pos = torch.searchsorted(self.full_keys, keys).clamp(max=len(self.full_keys) - 1)
        items = torch.where(self.full_keys[pos] == keys, self.full_items[pos], torch.full_like(keys, -1))
        return items.to(codes.device)

    def collision_rate(self) -> float:
        """Share of real items whose semantic codes (all but the suffix) are shared with another."""
        sem = _keys(self.codes[1:, :-1], self.code_num)
        _, inverse, counts = torch.unique(sem, return_inverse=True, return_counts=True)
        return float((counts[inverse] > 1).float().mean())

    def state_dict(self) -> dict:
        return {"codes": self.codes, "code_num": self.code_num}

    @classmethod
    def from_state_dict(cls, state):
        return cls(state["codes"], state["code_num"])


def build_code_table(semantic_codes, code_num) -> CodeTable:
    """``semantic_codes``: LongTensor [n_items, levels] for items 1..n (no padding row).

    Returns a CodeTable with a suffix column appended and the padding row 0 prepended.
    Raises EtegrecError if a collision group needs more suffixes than ``code_num``.
    """
    sem = semantic_codes.long().cpu()
    keys = _keys(sem, code_num)
    order = torch.argsort(keys, stable=True)  # stable: ties keep item-id order
    sorted_keys = keys[order]
    starts = torch.ones_like(sorted_keys, dtype=torch.bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    group_start = torch.cummax(torch.where(starts, torch.arange(len(keys)), torch.zeros_like(keys)), 0).values
    suffix = torch.empty_like(keys)
    suffix[order] = torch.arange(len(keys)) - group_start
    largest = int(suffix.max()) + 1 if len(suffix) else 0
    if largest > code_num:
        raise EtegrecError(
            f"{largest} items share the same {sem.shape[1]} semantic codes, more than the {code_num} "
            "suffix codes available: train the RQ-VAE longer (lower collision rate), raise code_num, "
            "or use better item embeddings"
        )
    codes = torch.cat([sem, suffix.unsqueeze(1)], dim=1)
    codes = torch.cat([torch.full((1, codes.shape[1]), -1, dtype=torch.long), codes], dim=0)
    return CodeTable(codes, code_num)
