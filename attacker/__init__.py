"""The black-box attacker: query a model server over HTTP, store what it releases, distil students from
the stored responses with several strategies, and report how much the endpoint leaks.

It knows the server only through HTTP (docs/design.md, Wire contract); it never imports ``app``. It imports
``training`` to load data and train students.
"""
