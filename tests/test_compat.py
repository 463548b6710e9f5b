"""RecBole 1.2.1 fixes in ``recbole_etegrec/compat.py`` that need a run to show, and RecBole's ``run`` contract."""
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
    # RecBole's run contract: every key run_recbole's result dict has, with the same meaning
    import inspect
    import re

    import recbole.quick_start.quick_start as recbole_quick_start

    source = inspect.getsource(recbole_quick_start.run_recbole)
    recbole_keys = set(re.findall(r'"(\w+)":', source[source.index("result = {"):]))
    assert recbole_keys >= {"best_valid_score", "valid_score_bigger", "best_valid_result", "test_result"}
    assert recbole_keys <= set(result)
    assert result["valid_score_bigger"] is True and result["best_valid_result"] == result["valid_result"]
    assert result["best_valid_score"] == result["best_valid_result"]["ndcg@10"]
