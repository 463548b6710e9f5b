"""Data side of the plugin: atomic-file checks, dataset preparation, code-sequence loaders."""
from recbole_etegrec.data.checks import check_inter_file
from recbole_etegrec.data.utils import create_dataset, data_preparation

__all__ = ["check_inter_file", "create_dataset", "data_preparation"]
