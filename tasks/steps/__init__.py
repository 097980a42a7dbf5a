"""The pipeline's Prefect tasks: each loads its inputs, calls pure code, and stores its result.

The heavy pure modules (torch for generating data, numba for training, matplotlib for figures)
are imported inside the tasks that use them, so a run whose steps are all cached loads none.
"""
