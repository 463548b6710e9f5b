"""Decoding: trie-constrained beam search over item codes, shared by ETEGRec and TIGER."""
from recbole_etegrec.decoding.beam_search import BeamOutput, beam_search, scores_to_item_matrix

__all__ = ["BeamOutput", "beam_search", "scores_to_item_matrix"]
