"""Widgets of tcf-tui: progress rows, the GPU panel, screen tabs and dialogs (no data access here)."""
