"""Screens of tcf-tui: Queue (1), Live (2), Results (3), and the key help (?)."""
