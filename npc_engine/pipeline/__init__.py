"""Pipeline stages: one file per stage and per backend, talking through ``base``'s interfaces."""
