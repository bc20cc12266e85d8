"""Class-group specialists (``python -m docclassify.train specialists=auto``; docs/second-stage.md).

    groups.py  the class groups a run's pooled OOF rows confuse most (pairs, or cliques grown from them)
    train.py   one specialist per group: the run's own recipe and folds on those classes' rows only, at a
               larger input size, each a normal run dir in ``<run dir>/specialists/<group>/`` (trained by
               engine.kfold.run_kfold: no second training loop)

Inference uses them with ``specialists.enabled=true`` (docclassify/predict/specialists.py).
"""

from docclassify.specialists.groups import Group, find_groups

SPECIALISTS_DIR = "specialists"    # inside the run dir
GROUPS_FILE = "groups.json"        # inside SPECIALISTS_DIR: what was found and trained
SPECIALIST_FILE = "specialist.json"  # inside each specialist's run dir: its group and parent

__all__ = ["GROUPS_FILE", "SPECIALISTS_DIR", "SPECIALIST_FILE", "Group", "find_groups"]
