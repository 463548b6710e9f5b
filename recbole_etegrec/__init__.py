"""recbole-etegrec: ETEGRec (LLaMA backbone) and TIGER as a RecBole plugin."""
from recbole_etegrec.errors import EtegrecError

# RecBole's compatibility fixes (compat.apply) run when a Config is built or a checkpoint is read,
# not at import: the command line's --help must not wait for torch and RecBole.

__version__ = "0.1.0"
__all__ = ["EtegrecError", "__version__"]
