"""The `bday` command line: `main` (the group, one-line errors), `users`, `ops`, `dev`."""
