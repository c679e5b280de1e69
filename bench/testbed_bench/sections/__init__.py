"""One module per report section; each `run(settings, testbeds)` returns plain data for JSON
or raises Skipped naming what it waits for."""
