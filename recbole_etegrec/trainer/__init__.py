"""Plugin trainers: ``<Model>Trainer`` in ``<model>_trainer.py``, found by ``registry.get_trainer``."""
