"""What happens to a message at its backend, shared by every path that sends one."""
