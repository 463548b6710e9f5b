"""The code-sequence transform's exact layout (the table swap is tested in test_etegrec.py)."""
import torch
from recbole.data.interaction import Interaction

from recbole_etegrec.data.dataloader import add_code_fields

CODES = torch.tensor([[-1, -1, -1, -1],   # padding item 0
                      [1, 2, 3, 0],
                      [4, 5, 6, 0],
                      [7, 8, 9, 1],
                      [10, 11, 12, 2]])


def batch():
    # RecBole's item_id_list is left-aligned with trailing zeros
    return Interaction({
        "item_id_list": torch.tensor([[1, 2, 0], [3, 0, 0]]),
        "item_length": torch.tensor([2, 1]),
        "item_id": torch.tensor([4, 1]),
    })


def test_layout_left_pads_history_then_target():
    out = add_code_fields(batch(), CODES, "item_id", "item_id_list", "item_length")
    # longest history in the batch is 2 items -> 8 history codes, then 4 target codes
    assert out["code_input"].tolist() == [
        [1, 2, 3, 0, 4, 5, 6, 0, 10, 11, 12, 2],
        [-1, -1, -1, -1, 7, 8, 9, 1, 1, 2, 3, 0],
    ]
    assert out["code_attention"].tolist() == [[1] * 12, [0] * 4 + [1] * 8]
    assert out["seq_end_position"].tolist() == [7, 7]
    assert out["target_codes"].tolist() == [[10, 11, 12, 2], [1, 2, 3, 0]]
    assert out["target_positions"].tolist() == [[8, 9, 10, 11]] * 2


def test_pads_to_longest_in_batch_not_max_length():
    b = batch()
    b.interaction["item_id_list"] = torch.cat([b["item_id_list"], torch.zeros(2, 17, dtype=torch.long)], 1)
    out = add_code_fields(b, CODES, "item_id", "item_id_list", "item_length")
    assert out["code_input"].shape == (2, 12)


def test_boundaries_mark_the_target_or_every_next_item():
    last = add_code_fields(batch(), CODES, "item_id", "item_id_list", "item_length")
    # boundary k = state at 4k + 3 predicts the item in slot k + 1 (slot 2 is the target)
    assert last["boundary_mask"].tolist() == [[False, True], [False, True]]
    assert last["boundary_items"].tolist() == [[0, 4], [0, 1]]
    every = add_code_fields(batch(), CODES, "item_id", "item_id_list", "item_length", supervise="all")
    # row 0: items 1, 2 | 4 -> boundaries predict 2 and 4; row 1: item 3 | 1 -> only the target
    assert every["boundary_mask"].tolist() == [[True, True], [False, True]]
    assert every["boundary_items"].tolist() == [[2, 4], [0, 1]]
