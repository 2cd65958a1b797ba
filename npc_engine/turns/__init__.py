"""Turns: a turn is a value (``TurnHandle``) and a chain of stage functions.

* ``handle``: the handle with its one cancel path, its outbox, speculative commit / drop;
* ``reply``: the model's reply, LLM deltas -> cues -> guard -> text -> clauses;
* ``speech``: synthesis through the voice chain and the messages of each audio chunk.
"""
