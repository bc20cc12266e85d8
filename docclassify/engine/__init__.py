"""The training engine, one module per level of the story:

- ``kfold``: the run (plan folds, run each, pool OOF, write results) -> ``plan``, ``oof``
- ``fold``: one fold (build its parts, loop epochs, validate, keep the best) -> ``parts``,
  ``loaders``, ``evaluate``
- ``epoch``: the step loop (forward, loss, backward, optimiser step, EMA)

Beside them: ``optim`` and ``mixup`` (timm factories), ``resume`` (exact continuation),
``distributed`` (torchrun/DDP), ``setup`` (device, seeds, AMP), ``signals``, ``callbacks``.
"""
