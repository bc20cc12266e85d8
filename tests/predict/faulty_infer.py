"""``python -m faulty_infer ARGS``: ``python -m docclassify.infer ARGS`` that sends itself a signal at
a chosen moment (tests/predict/test_interrupted_infer.py). DOCCLASSIFY_TEST_INTERRUPT=SIGNAL:WHEN,
WHEN one of predict (while the fold models predict the test set) or write (after submission.csv is
complete in its temp file, before test_probs.csv is written). SIGNAL ``pause``: at that moment write
the file DOCCLASSIFY_TEST_PAUSED and wait there for the test's signal (conftest.signal_group_when_paused)."""

from __future__ import annotations

import os
import runpy
import signal
import time
from pathlib import Path


def _interrupt(name: str) -> None:
    if name != "pause":
        os.kill(os.getpid(), getattr(signal, name))
        return
    Path(os.environ["DOCCLASSIFY_TEST_PAUSED"]).write_text(str(os.getpid()))
    time.sleep(120)  # the signal ends the sleep (and the command)


spec = os.environ.get("DOCCLASSIFY_TEST_INTERRUPT")
if spec:
    name, when = spec.split(":")
    import docclassify.predict.outputs as outputs
    import docclassify.predict.pipeline as pipeline

    if when == "predict":
        real_predict = pipeline.predict_members

        def predict_members(*args, **kwargs):
            _interrupt(name)
            return real_predict(*args, **kwargs)

        pipeline.predict_members = predict_members
    else:
        real_write = outputs.write_probability_frame

        def write_probability_frame(*args, **kwargs):
            _interrupt(name)
            return real_write(*args, **kwargs)

        outputs.write_probability_frame = write_probability_frame
runpy.run_module("docclassify.infer", run_name="__main__", alter_sys=True)
