"""RecBole 1.2.1 fixes in ``recbole_etegrec/compat.py`` that need a run to show."""
import math

from recbole_etegrec.quick_start import run

METRICS = ["Recall", "NDCG", "ItemCoverage", "GiniIndex"]


def test_item_coverage_and_gini_index_are_reported(tmp_path):
    """RecBole's Collector called ``.cpu()`` on ``data.num_items`` (an int): ``'int' object has no
    attribute 'cpu'`` at the first evaluation, plain SASRec included. The command-line form of the
    list passes the evaluation checks, and both metrics come back at every cut-off."""
    result = run("SASRec", "ml-100k", config_dict={
        "debug": True, "debug_samples": 40, "epochs": 1, "show_progress": False, "state": "WARNING",
        "checkpoint_dir": str(tmp_path)}, cmd_args=[f"--metrics=[{','.join(METRICS)}]"])
    for phase in ("valid_result", "test_result"):
        for k in (5, 10):
            coverage, gini = result[phase][f"itemcoverage@{k}"], result[phase][f"giniindex@{k}"]
            assert 0 < coverage <= 1 and 0 <= gini <= 1 and not math.isnan(coverage + gini), result[phase]
        assert "ndcg@10" in result[phase] and "recall@10" in result[phase]
