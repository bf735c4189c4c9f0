"""Code that exists only for speed, behind ``TASKQUEUE_FAST_PATHS`` (default ``on``).

Each module here does what a stock path of RQ, redis-py, gunicorn or Flask does, faster; with the
switch ``off`` the stock path runs instead, with the same behaviour. Only the modules that choose a
path import from here: the app factory (``api/app.py``), the job service (``api/jobs.py``), the
worker classes (``worker/classes.py``) and the generator's server (``config.FAST_WEB_WORKER_CLASSES``).
The private names of other libraries each module relies on, and the test that fails when one changes,
are listed in ``COUPLING.md``.
"""
