"""Experiments that answer a question with several training runs: the transfer experiment (does pre-training
help?) in :mod:`maskdcpt.experiments.transfer`, its report in :mod:`maskdcpt.experiments.report`."""
