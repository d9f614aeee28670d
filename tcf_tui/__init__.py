"""User interfaces of tcf: the `tcf` CLI and the `tcf-tui` dashboard; the engine never imports from here."""
