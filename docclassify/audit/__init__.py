"""The data audit: ``python -m docclassify.audit RUN_DIR`` (see ``docclassify.audit.cli``).

A package (not a module ``audit.py``): ``cli`` (the command, ``main``), ``rundir`` (what is read
from a run dir), ``labels`` (label issues, cleanlab), ``duplicates`` (duplicates.csv; the
search itself is ``docclassify.data.duplicates``, which training's ``folds.group_duplicates``
uses too) and ``planted`` (known near-duplicates to check the search on a data set).
"""

from docclassify.audit.cli import main, run_audit

__all__ = ["main", "run_audit"]
