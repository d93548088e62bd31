"""Adapters to other pruning libraries, each an optional extra imported on its own:

- ``fpgm_ext.integrations.torch_pruning``: ``FPGMImportance`` for Torch-Pruning
  (``pip install "fpgm_ext[tp]"``).

Nothing is imported here, so ``import fpgm_ext`` never needs those libraries.
"""
