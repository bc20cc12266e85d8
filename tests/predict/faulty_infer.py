"""``python -m faulty_infer ARGS``: ``python -m docclassify.infer ARGS`` that sends itself a signal at
a chosen moment (tests/predict/test_interrupted_infer.py). DOCCLASSIFY_TEST_INTERRUPT=SIGNAL:WHEN,
WHEN one of predict (while the fold models predict the test set) or write (after submission.csv is
complete in its temp file, before test_probs.csv is written)."""

from __future__ import annotations

import os
import runpy
import signal

spec = os.environ.get("DOCCLASSIFY_TEST_INTERRUPT")
if spec:
    name, when = spec.split(":")
    signum = getattr(signal, name)
    import docclassify.predict.inference as inference

    if when == "predict":
        real_predict = inference.predict_members

        def predict_members(*args, **kwargs):
            os.kill(os.getpid(), signum)
            return real_predict(*args, **kwargs)

        inference.predict_members = predict_members
    else:
        real_write = inference.write_probability_frame

        def write_probability_frame(*args, **kwargs):
            os.kill(os.getpid(), signum)
            return real_write(*args, **kwargs)

        inference.write_probability_frame = write_probability_frame
runpy.run_module("docclassify.infer", run_name="__main__", alter_sys=True)
