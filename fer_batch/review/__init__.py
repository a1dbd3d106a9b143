"""``fer-batch review``: a person checks the labels in the browser, corrects the wrong ones, and loses nothing.

- :mod:`fer_batch.review.items` - what is reviewed: each photo face and each video track segment of a CSV.
- :mod:`fer_batch.review.decisions` - the append-only review file and ``--apply`` (the CSV with the decisions).
- :mod:`fer_batch.review.crops` - faces cut from the sources by the CSV's boxes, cached.
- :mod:`fer_batch.review.server` - the local page: loopback only, a token per run, the page's files in ``static/``.
"""
