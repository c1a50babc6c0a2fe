"""`kssgan evaluate` (report.py) and the sweep's held-out validation (validation.py).

The attacks and measures they run are kssgan_hpc.attack's.
"""
