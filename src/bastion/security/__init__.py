"""Who may call: API keys, loopback identity, trusted hosts."""
