"""Evaluation: needle suites over memory configurations (`streamer eval`) and benchmark runs (`streamer bench`).

options.py     the grid of configurations (policy x budget x fps x language model)
suite.py       which streams to replay: the default needle suite or a YAML file
descriptions.py  each frame described once and reused by every configuration
replaying.py   a file replayed into an engine stream with questions at their times (and a context window)
live.py        the same through a websocket server, as a live client, measuring client-side latency
evaluate.py    running a suite over the grid; tables.py, plots.py, report.py: what it writes
bench.py       StreamingBench, OVO-Bench and RVS files replayed and scored by each benchmark's rule
cli.py         the `eval` and `bench` subcommands
"""
