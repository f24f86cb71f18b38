"""The tiny offline models and the toy task they learn (src/tiny/models.py builds them). Nothing
is imported here, so that a command reading which tiny models it needs (src/tiny/on_demand.py)
does not load torch."""
