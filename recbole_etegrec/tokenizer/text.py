"""Item text -> vectors: the atomic .item file's text fields and a local Hugging Face encoder."""
from typing import Dict

import torch

from recbole_etegrec.errors import EtegrecError

TEXT_MAX_LENGTH = 256


def read_item_texts(path, fields, item_field="item_id", sep="\t") -> Dict[str, str]:
    """{item token: 'field: value; ...'} from a RecBole atomic .item file (empty values skipped)."""
    with open(path, "r", encoding="utf-8") as f:
        header = [c.partition(":")[0] for c in f.readline().rstrip("\n").split(sep)]
        if item_field not in header:
            raise EtegrecError(f"{path}: header has no '{item_field}' column: the first line must name it")
        present = [name for name in fields if name in header]
        if not present:
            raise EtegrecError(
                f"{path}: none of text_fields {list(fields)} is a column (columns: {header}): fix text_fields"
            )
        id_col, cols = header.index(item_field), [header.index(name) for name in present]
        texts = {}
        for line in f:
            values = line.rstrip("\n").split(sep)
            if len(values) != len(header):
                continue
            parts = [f"{name}: {values[c].strip()}" for name, c in zip(present, cols) if values[c].strip()]
            texts[values[id_col]] = "; ".join(parts)
    return texts



@torch.no_grad()
def encode_texts(texts, encoder_path, batch_size=64, show_progress=False, max_length=TEXT_MAX_LENGTH) -> torch.Tensor:
    """Mean-pooled last hidden states [len(texts), hidden] from a local Hugging Face encoder."""
    from tqdm import tqdm
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(encoder_path, local_files_only=True)
    model = AutoModel.from_pretrained(encoder_path, local_files_only=True).eval()
    # longest first in batches of similar length: far less padding, same result per text
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = torch.zeros(len(texts), model.config.hidden_size)
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="encode item text", disable=not show_progress, ncols=100):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out[idx] = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return out
