"""Trie-constrained beam search against exhaustive scoring, with a synthetic decoder."""
import torch

from recbole_etegrec.decoding import beam_search, scores_to_item_matrix
from recbole_etegrec.tokenizer.code_table import build_code_table

V, L = 6, 4


def synthetic_decoder(batch, seed=0):
    """Log-probs that depend on the row, the level and the previous code (like a real decoder)."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(batch, L, V, V, generator=g).log_softmax(-1)  # [row, level, prev, next]
    first = torch.randn(batch, V, generator=g).log_softmax(-1)

    def start():
        return first.clone(), torch.arange(batch)

    def step(rows, parents, codes, level):
        rows = rows[parents]
        return table[rows, level, codes], rows

    def item_score(row, codes):
        s = first[row, codes[0]]
        for lvl in range(1, L):
            s = s + table[row, lvl, codes[lvl - 1], codes[lvl]]
        return s

    return start, step, item_score


def small_table(n_items=25, seed=1):
    g = torch.Generator().manual_seed(seed)
    sem = torch.randint(0, 3, (n_items, L - 1), generator=g)  # few codes -> many collisions
    return build_code_table(sem, V)


def test_returns_only_real_items_in_score_order():
    table = small_table()
    start, step, _ = synthetic_decoder(batch=3)
    out = beam_search(start, step, table, num_beams=5)
    assert (out.items > 0).all()
    assert torch.equal(table.lookup(out.codes.reshape(-1, L)).reshape(3, 5), out.items)
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()


def test_wide_beam_matches_exhaustive_scoring():
    table = small_table()
    n = table.n_items - 1
    start, step, item_score = synthetic_decoder(batch=4, seed=3)
    out = beam_search(start, step, table, num_beams=n)
    for row in range(4):
        exhaustive = torch.stack([item_score(row, table.codes[i]) for i in range(1, n + 1)])
        order = torch.argsort(exhaustive, descending=True) + 1
        assert out.items[row].tolist() == order.tolist()
        assert torch.allclose(out.scores[row], exhaustive.sort(descending=True).values, atol=1e-5)


def test_more_beams_than_items_leaves_dead_beams():
    table = small_table(n_items=4)
    start, step, _ = synthetic_decoder(batch=2)
    out = beam_search(start, step, table, num_beams=10)
    assert (out.items[:, :4] > 0).all() and (out.items[:, 4:] == -1).all()
    matrix = scores_to_item_matrix(out, table.n_items)
    assert torch.isfinite(matrix).sum(1).tolist() == [4, 4]
    assert torch.isinf(matrix[:, 0]).all()
