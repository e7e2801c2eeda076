"""One study module per chapter, named after its notebook (the chapter contract).

Model modules (:mod:`collapse_utils.models.gaussian`, :mod:`~collapse_utils.models.discrete`,
:mod:`~collapse_utils.models.gmm`, :mod:`~collapse_utils.models.vae`, :mod:`~collapse_utils.models.lm`) hold algorithms
and know nothing about pages.  A study module holds what one page needs, with the same interface
in every chapter:

``validate_params(params)``    every parameter checked, one ParamError listing all problems;
``check_inputs(params)``       (optional) data and models present, before any compute;
``run(...)``                   the chapter's experiments -> one result object;
figure and table functions     for the notebook's short cells;
``claims(result, params)``     the paper's statements tested by this run (:mod:`collapse_utils.chapters.claims`).

A new chapter is one study module, one notebook, one preset file and one line in
:data:`collapse_utils.tooling.config.CHAPTERS`.
"""
