"""Data side of the plugin: atomic-file checks, dataset preparation, code-sequence loaders."""
from recbole_etegrec.data.build import create_dataset, data_preparation
from recbole_etegrec.data.checks import check_inter_file

__all__ = ["check_inter_file", "create_dataset", "data_preparation"]
