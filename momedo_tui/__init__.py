"""momedo-tui: a terminal console for the operator of a running momedod.

It talks to the daemon only through the admin socket (the same JSON-lines protocol as
``momedoctl``, see ``momedod.admin.protocol``), found from the same config file, and shows the
server's state, its users and devices, groups and channels and the audit log, refreshed
every two seconds. Run it as ``momedo-tui [-c FILE | --dev] [--org-key FILE]``; ``q`` quits.
"""
