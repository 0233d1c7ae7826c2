"""DVC stage `train`: shape-check and fit the CNN of params.yaml; resumes an interrupted run (cnnpipe.training)."""

from cnnpipe.config import Params
from cnnpipe.training import train


def run(params: Params) -> None:
    train(params)
