"""recbole-etegrec: ETEGRec (LLaMA backbone) and TIGER as a RecBole plugin."""
from recbole_etegrec import compat
from recbole_etegrec.errors import EtegrecError

compat.apply()

__version__ = "0.1.0"
__all__ = ["EtegrecError", "__version__"]
