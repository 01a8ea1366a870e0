"""Teams on one gateway: the key store, the key table each request is checked against, the
side API's sign-in (bearer, x-api-key, dashboard session cookie) and the admin API."""
