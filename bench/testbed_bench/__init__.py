"""The testbed benchmark report (`bench/run_report.py`): sections measured on emulated devices,
each with its baseline from the same run."""
