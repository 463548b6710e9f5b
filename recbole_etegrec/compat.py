"""RecBole 1.2.1 on today's stack: the small fixes this package applies when it is imported.

What is fixed here, and why not by pinning:
- torch >= 2.6 loads with ``weights_only=True`` by default; RecBole's own checkpoints pickle the
  whole ``Config`` and fail to load in ``Trainer.evaluate(load_best_model=True)`` and
  ``resume_checkpoint``. We give only RecBole's trainer module a ``torch`` whose ``load``
  defaults to ``weights_only=False`` (it only reads checkpoints a trainer itself wrote);
  ``torch.load`` everywhere else keeps the safe default.
- ``recbole.model.sequential_recommender`` (sine.py) turns on autograd anomaly detection for the
  whole process at import, which costs ~15% speed; we switch it off again.
- ``Collector.get_data_struct`` calls ``.cpu()`` on every collected value, but ``data.num_items``
  (ItemCoverage, GiniIndex) is an int and ``data.count_items`` (AveragePopularity, TailPercentage)
  a Counter: ``'int' object has no attribute 'cpu'`` at the first evaluation, for any model. Our
  ``get_data_struct`` is RecBole's with ``.cpu()`` applied to tensors only.

- ``AbstractTrainer.__init__`` wraps every model in ``DistributedDataParallel(model,
  device_ids=[local_rank])`` when distributed; on CPU (gloo) DDP refuses ``device_ids`` ("device_ids
  ... cpu"), so SASRec and TIGER could not run multi-process without a GPU. RecBole's trainer module
  gets a ``DistributedDataParallel`` that passes ``device_ids`` for CUDA modules only.
- pandas 2.x warns (FutureWarning) at every ``fillna(inplace=True)`` on a chained column in
  ``Dataset._fill_nan``; under pandas < 3 that call still works, so the warning is silenced for
  that RecBole module only.
- ``init_logger`` names the log file by model, dataset, second and config hash: two runs of one
  config started in one second append to one file. ``compat.init_logger`` adds the run id.

What is pinned instead (setup.cfg): numpy<2 (``np.float_`` in RecBole's configurator, ``np.bool8``
in ray 2.6.3), pandas<3 (``fillna(inplace=True)`` on a chained column silently keeps NaNs in
``Dataset._fill_nan``), setuptools<81 (``pkg_resources`` for ray 2.6.3). Patching those in place
would mean editing RecBole's data code; a pin is smaller and cannot silently change results.
"""
import copy
import types
import warnings

import torch

_APPLIED = False


class _TrustedLoadTorch(types.ModuleType):
    """``torch`` for RecBole's own modules: identical except ``load`` reads full pickles."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return torch.load(*args, **kwargs)


# what RecBole's get_data_struct drops after each evaluation (per-evaluation results)
_PER_EVALUATION = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label")


def _get_data_struct(self):
    """RecBole 1.2.1's ``Collector.get_data_struct``, moving only tensors to the CPU (the data
    counts some metrics need are an int and a Counter, which RecBole's ``.cpu()`` crashes on)."""
    data = self.data_struct._data_dict
    for key, value in data.items():
        if isinstance(value, torch.Tensor):
            data[key] = value.cpu()
    returned_struct = copy.deepcopy(self.data_struct)
    for key in _PER_EVALUATION:
        if key in self.data_struct:
            del self.data_struct[key]
    return returned_struct


def _device_ddp(module, device_ids=None, **kwargs):
    """RecBole's DDP call, with ``device_ids`` only where DDP takes them (a CUDA module)."""
    from torch.nn.parallel import DistributedDataParallel

    on_cuda = any(p.is_cuda for p in module.parameters())
    return DistributedDataParallel(module, device_ids=device_ids if on_cuda else None, **kwargs)


def init_logger(config, run_id) -> None:
    """RecBole's ``init_logger`` with the run id in the log file's name: RecBole names it by model,
    dataset, second and config hash, so two runs of one config started in one second share a file."""
    from recbole.utils import logger as recbole_logger

    stamp = recbole_logger.get_local_time
    recbole_logger.get_local_time = lambda: f"{stamp()}-{run_id}"
    try:
        recbole_logger.init_logger(config)
    finally:
        recbole_logger.get_local_time = stamp


def apply() -> None:
    global _APPLIED
    if _APPLIED:
        return
    import recbole.model.sequential_recommender  # noqa: F401  (its import enables anomaly mode)
    import recbole.trainer.trainer as trainer_module
    from recbole.evaluator.collector import Collector

    torch.autograd.set_detect_anomaly(False)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.data\.dataset\.dataset")
    # RecBole builds torch.cuda.amp.GradScaler(enabled=False) every epoch: deprecated, harmless
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.trainer\.trainer")
    trusted = _TrustedLoadTorch()
    trainer_module.torch = trusted
    trainer_module.DistributedDataParallel = _device_ddp
    Collector.get_data_struct = _get_data_struct
    _APPLIED = True
