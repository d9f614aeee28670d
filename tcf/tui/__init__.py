"""User interfaces of tcf: the `tcf` CLI and the `tcf-tui` dashboard; the tcf never imports from here."""
