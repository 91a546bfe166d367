"""Experiments that answer a question with several training runs: the transfer experiment (does pre-training
help?). One module per stage, imported only downwards:

* :mod:`~maskdcpt.experiments.plan`: the arms (``ARMS``), the experiment's config, each arm's resolved runs, the
  experiment folder;
* :mod:`~maskdcpt.experiments.report`: ``results.json``, ``report.md``, ``curves.png`` from the run folders (the plan
  only);
* :mod:`~maskdcpt.experiments.cluster`: the arms as one job array and the job that writes the report;
* :mod:`~maskdcpt.experiments.run`: an arm's runs, in this process or as a job; the whole experiment.
"""
