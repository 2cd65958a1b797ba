"""Reply quality: the automatic checks on what an NPC says (``checks``) and the eval that
measures them over many player lines (``eval``).

Kept free of imports: the guard stage imports ``checks`` and the eval imports the session,
so importing one from here would tie them into a cycle.
"""
