"""User interfaces of tcf (CLI now, Textual TUI later); the engine never imports from here."""
