"""Decoding: trie-constrained beam search over item codes, shared by ETEGRec and TIGER, and the
teacher-forced likelihood of given items over the same decoder protocol."""
from recbole_etegrec.decoding.beam_search import BeamOutput, beam_search, scores_to_item_matrix
from recbole_etegrec.decoding.scoring import code_scores

__all__ = ["BeamOutput", "beam_search", "code_scores", "scores_to_item_matrix"]
