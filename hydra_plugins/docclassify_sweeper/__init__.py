"""docclassify's Optuna sweeper: hydra-optuna-sweeper plus pruning, enqueued trials, trial
summaries and best-config export. Select it with ``hydra/sweeper: docclassify_optuna``
(the ``hparams_search`` configs do). Hydra finds it by scanning the ``hydra_plugins``
namespace package; the work is done in ``_impl`` and ``docclassify.sweep``.
"""
