"""How a job state looks in a terminal, the same in `tcf queue ls` and on the dashboard (rich style names)."""

STATE_STYLE = {
    "running": "bold green", "stale": "yellow", "queued": "cyan", "blocked": "yellow", "lost": "bold red",
    "failed": "red", "finished": "green", "cancelled": "dim",
}
