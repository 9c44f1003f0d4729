"""The engine: what the four tools do, independent of MCP.

It owns the run path and the domain state of one server process: typed requests in
(``requests``), typed results out (``results``), ``PolicyEngine`` (``core``) answering them
through one module per step: ``routing`` (route_task), ``constraints`` (what binds a run),
``stages`` (one owner per stage), ``calls`` (admission, reservation, one provider call and
its settlement, with ``accounting`` and ``spool``), ``fallback`` (the declared chain),
``outcome`` (contract, usage, escalation of a paid call), ``critic``, ``consent``,
``escalation`` and ``budgets`` (check_budget). ``store`` is the one door to the ledger and
``providers`` the one door to provider clients. It imports policy, ledger and plugins;
nothing below it imports it.
"""
