"""Teams on one gateway: the key store, the key table each request is checked against, the
side API's sign-in (bearer, x-api-key, dashboard session cookie), the admin API, and per-key
and per-model limits and budgets."""
