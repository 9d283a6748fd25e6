"""procq_sqla's benchmark: each workload against raw PostgreSQL on the same server.

`python -m bench` runs every workload of issue 7 a few times, interleaving each of our
measurements with its raw-PostgreSQL baseline so that both see the same noise, and
prints the median, the spread and the ratio to the baseline measured in the same run.
The machine is shared and noisy: ratios within one run are what count.
"""
