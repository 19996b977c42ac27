"""Money: the price book (rates as data with effective dates, `data/prices.toml` plus the user's override), exact
integer nano-dollar accounting of a request's usage, per-agent budgets with reservations, and the usage report
behind `usage.query` and `agentspace usage`.

It may import `gateway.store` and the shared bottom only. Where it needs an agent's budget it names the shape it
needs (`budgets.BudgetedAgent`) instead of importing `gateway.context`, which sits above it.
"""
