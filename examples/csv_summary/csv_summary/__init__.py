"""An example of a team's own taskqueue tasks, as an installable package (see README.md)."""
