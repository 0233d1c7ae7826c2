"""DVC stage `evaluate`: test-set metrics and plots, logged into the training's MLflow run (cnnpipe.evaluation)."""

from cnnpipe.config import Params
from cnnpipe.evaluation import evaluate


def run(params: Params) -> None:
    evaluate(params)
