"""Networks and layers the model families are built from (and may share).

* :mod:`.showerflow` — the Shower Flow (per-shower summaries, zuko splines);
* :mod:`.pointwise` — the PointWise Net and its folded inference form;
* :mod:`.edm` — EDM / consistency preconditioning and the EDM loss;
* :mod:`.ema` — exponential moving average of weights;
* :mod:`.transfusion`, :mod:`.vit`, :mod:`.vae` — CaloDREAM's energy and shape networks;
* :mod:`.quantile_map` — per-group monotone quantile maps (post-hoc calibrations).
"""
