"""The read side of experiments.db, as plain data and text (no terminal library: the CLI and the TUI draw):
runs.py loads runs once and knows their fields; render.py is the one format registry and metric cell;
results.py, pivot.py and view.py build the flat table, the paper pivot and the Results screen's table;
plot.py the scaling figure."""
